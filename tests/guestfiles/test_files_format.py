"""The file manifest and chunker: round trips (hypothesis), forged manifests rejected, the
compiled-chunker check, streaming = whole-buffer cuts, and dedupe against an image backup."""

from __future__ import annotations

import io
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkeep.guestfiles.excludes import Excludes
from vmkeep.guestfiles.local import LocalSource
from vmkeep.storage import cdc
from vmkeep.storage.disk_backup import backup_disk
from vmkeep.storage.errors import FormatError
from vmkeep.storage.file_backup import backup_files
from vmkeep.storage.file_manifest import (
    FileEntry,
    FilePoint,
    decode_file_point,
    encode_file_point,
    sort_key,
)
from vmkeep.storage.repository import Repository

NOW = datetime(2025, 6, 1, tzinfo=UTC)
names = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


def point_of(entries: list[FileEntry]) -> FilePoint:
    return FilePoint(name="p", time=NOW, entries=entries, source="/src", client="c")


@settings(max_examples=60, deadline=None)
@given(st.lists(names, min_size=0, max_size=20, unique=True), st.data())
def test_manifest_round_trip(children: list[bytes], data: st.DataObject) -> None:
    entries = [FileEntry(b"/", "dir", 0o755, mtime_ns=1)]
    for name in sorted(children):
        size = data.draw(st.integers(0, 3))
        entries.append(FileEntry(
            b"/" + name, "file", 0o644, 0, 0, "root", None, 123, 456, 7, 8, 1, size,
            xattrs=data.draw(st.none() | st.lists(st.tuples(names, st.binary(max_size=8)))),
            chunk_ids=os.urandom(32) if size else b"", chunk_lengths=[size] if size else [],
        ))
    point_id, blob = encode_file_point(point_of(entries))
    back = decode_file_point(blob, point_id)
    assert back.entries == entries
    assert [sort_key(e.path) for e in back.entries] == sorted(sort_key(e.path) for e in entries)


@pytest.mark.parametrize(
    "bad",
    [b"/../etc/passwd", b"relative", b"/a//b", b"/a/./b", b"/nul\0x", b"/missing-parent/x"],
)
def test_forged_paths_are_rejected(bad: bytes) -> None:
    entries = [FileEntry(b"/", "dir"), FileEntry(bad, "file")]
    point_id, blob = encode_file_point(point_of(entries))
    with pytest.raises(FormatError):
        decode_file_point(blob, point_id)


def test_forged_chunk_lists_are_rejected() -> None:
    entries = [FileEntry(b"/", "dir"),
               FileEntry(b"/f", "file", size=10, chunk_ids=bytes(32), chunk_lengths=[5])]
    point_id, blob = encode_file_point(point_of(entries))
    with pytest.raises(FormatError, match="chunks cover"):
        decode_file_point(blob, point_id)


def test_compiled_chunker_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    cdc.require_compiled()  # the real install has it
    monkeypatch.setitem(sys.modules, "pyfastcdc.cy", None)
    with pytest.raises(cdc.ChunkerUnavailable, match="pure-Python fallback"):
        cdc.require_compiled()


@settings(max_examples=20, deadline=None)
@given(st.binary(min_size=0, max_size=300_000), st.integers(0, 2**32))
def test_stream_cuts_equal_buffer_cuts(data: bytes, seed: int) -> None:
    chunker = cdc.Chunker(1024, 4096, 16384)
    whole = [bytes(v) for v in chunker.cut(data)]
    assert b"".join(whole) == data
    assert list(cdc.Chunker(1024, 4096, 16384).cut_stream(io.BytesIO(data))) == whole


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "hit"),
    [
        ("*.tmp", "a/b/c.tmp", False, True),
        ("*.tmp", "a/b/c.tmpx", False, False),
        ("/build/", "build", True, True),
        ("/build/", "build", False, False),
        ("/build/", "src/build", True, False),
        ("home/*/Downloads", "home/ann/Downloads", True, True),
        ("home/*/Downloads", "home/ann/x/Downloads", True, False),
        ("**/node_modules", "x/y/node_modules", True, True),
        ("var/**", "var/a/b", False, True),
    ],
)
def test_exclude_patterns(pattern: str, path: str, is_dir: bool, hit: bool) -> None:
    assert Excludes([pattern]).match(path, is_dir) is hit


@settings(max_examples=25, deadline=None)
@given(st.lists(names, min_size=1, max_size=8, unique=True))
def test_local_names_round_trip_exactly(tmp_path_factory: pytest.TempPathFactory,
                                        children: list[bytes]) -> None:
    from vmkeep.guestfiles.restore import restore_paths

    root = tmp_path_factory.mktemp("names")
    src, out = root / "src", root / "out"
    src.mkdir()
    out.mkdir()
    ok = [n for n in children if len(n) <= 255 and b"\\" not in n]
    for n in ok:
        with open(os.fsencode(src) + b"/" + n, "wb") as f:
            f.write(n)
    repo = Repository.init(str(root / "repo"))
    result = backup_files(repo, LocalSource(src))
    from vmkeep.guestfiles.backup import commit_file_point

    point = commit_file_point(repo, "n", result, source=str(src), client="t")
    summary = restore_paths(repo, point, ["/"], out)
    assert summary.ok
    assert sorted(os.listdir(os.fsencode(out))) == sorted(ok)
    for n in ok:
        with open(os.fsencode(out) + b"/" + n, "rb") as f:
            assert f.read() == n


@pytest.mark.parametrize("layout", [{"image_cdc": None}, {"version": 4}])
def test_file_backup_dedupes_against_an_image(tmp_path: Path, layout: dict[str, Any]) -> None:
    """A file chunk equal to an image frame is stored once where frames are named by their
    bytes: frames stored whole (``--image-cdc 0``) and every frame up to format 4.  Format 5
    names a frame cut into pieces by its recipe, so only its pieces can match (docs/guide.md,
    "File backups")."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, **layout)
    blocks = [os.urandom(64 * 1024) for _ in range(8)]
    image = tmp_path / "disk.img"
    image.write_bytes(b"".join(blocks))
    with open(image, "rb") as f:
        backup_disk(repo, f, image.stat().st_size)
    src = tmp_path / "src"
    src.mkdir()
    for i, block in enumerate(blocks):  # files of one image chunk each: one CDC chunk each
        (src / f"f{i}").write_bytes(block)
    result = backup_files(Repository.open(str(tmp_path / "repo")), LocalSource(src))
    assert result.stats.files_read == 8 and result.stats.bytes_new == 0
