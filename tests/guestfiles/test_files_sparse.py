"""Sparse files in file backups: holes are listed as zero runs, never read, and restored as holes.

A 1 TiB ``/var/log/lastlog`` holding a few KiB is the classic case: read whole it is hours of
zeros.  Here: a local sparse file's holes (``SEEK_DATA``/``SEEK_HOLE``) become ``ZERO_ID`` runs,
its data ranges are read and cut; restores, random reads, change detection, check, prune and the
format's validation all follow the runs."""

from __future__ import annotations

import json
import os
import random
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.guestfiles.files_helpers import new_repo
from vmkeep.guestfiles.backup import commit_file_point
from vmkeep.guestfiles.local import LocalSource
from vmkeep.guestfiles.restore import restore_paths
from vmkeep.guestfiles.tree import PointTree
from vmkeep.storage.checker import check_repository
from vmkeep.storage.codec import ID_SIZE, MAX_BLOB_SIZE, ZERO_ID
from vmkeep.storage.errors import FormatError
from vmkeep.storage.file_backup import MIN_HOLE, FileBackupResult, _runs, backup_files
from vmkeep.storage.file_manifest import (
    ZERO_RUN_MAX,
    FileEntry,
    FilePoint,
    decode_file_point,
    encode_file_point,
    latest_file_point,
    load_file_point,
)
from vmkeep.storage.manifest import point_key
from vmkeep.storage.point_header import parse_header
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

MiB = 1 << 20
#: (offset, length) of the data written into the sparse test file; everything else is a hole.
DATA = [(1 * MiB, 300), (40 * MiB, 3 * MiB + 17), (70 * MiB - 5, 5)]
SIZE = 96 * MiB


def _sparse(path: Path, size: int = SIZE, data: list[tuple[int, int]] = DATA) -> bytes:
    """Write a sparse file of seeded data and holes; return its content (small files only)."""
    rng = random.Random(23)
    content = bytearray(size if size <= SIZE else 0)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length in data:
            chunk = rng.randbytes(length)
            f.seek(off)
            f.write(chunk)
            if content:
                content[off : off + length] = chunk
    return bytes(content)


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _backup(repo: Repository, src: Path) -> tuple[FileBackupResult, str]:
    parent = latest_file_point(repo, "s")
    result = backup_files(repo, LocalSource(src), parent)
    point = commit_file_point(repo, "s", result, source=str(src), client="s",
                              parent=parent.id if parent else None)
    return result, point.id


def _entry(repo: Repository, point_id: str, path: bytes) -> FileEntry:
    return next(e for e in load_file_point(repo, point_id).entries if e.path == path)


@pytest.fixture
def sparse_tree(tmp_path: Path) -> tuple[Path, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    content = _sparse(src / "lastlog")
    if _allocated(src / "lastlog") >= SIZE // 2:
        pytest.skip("this file system does not keep holes")
    (src / "small").write_bytes(b"hello")
    return src, content


def test_holes_are_not_read_and_restore_as_holes(
    tmp_path: Path, sparse_tree: tuple[Path, bytes]
) -> None:
    src, content = sparse_tree
    repo = new_repo(tmp_path / "repo")
    result, point_id = _backup(repo, src)
    stats = result.stats
    data_bytes = sum(length for _, length in DATA)
    # holes of 1 MiB or more are listed, not read: what is read is the data and small gaps
    assert stats.bytes_sparse >= SIZE - data_bytes - 3 * MIN_HOLE - 3 * 4096
    assert stats.bytes_read + stats.bytes_sparse == SIZE + len(b"hello")
    entry = _entry(repo, point_id, b"/lastlog")
    ids = entry.chunks()
    assert ZERO_ID in ids and entry.size == SIZE == sum(entry.chunk_lengths)
    assert all(length <= ZERO_RUN_MAX for length in entry.chunk_lengths)

    out = tmp_path / "out"
    out.mkdir()
    summary = restore_paths(repo, point_id, ["/"], out)
    assert summary.ok, summary
    assert (out / "lastlog").read_bytes() == content
    assert (out / "small").read_bytes() == b"hello"
    # the zero runs stay holes: far less allocated than the file's size
    assert _allocated(out / "lastlog") < 16 * MiB

    # random reads through a zero run and across its edges return the file's bytes
    tree = PointTree(repo, load_file_point(repo, point_id))
    f = tree.open("/lastlog")
    for off, length in [(0, 100), (MiB - 10, 400), (20 * MiB, MiB), (40 * MiB - 7, 20),
                        (70 * MiB - 9, 12), (SIZE - 50, 100)]:
        f.seek(off)
        assert f.read(length) == content[off : off + length], off

    # the next backup reuses the chunk list (zero runs count as present), check and prune agree
    again, second = _backup(repo, src)
    assert again.stats.files_unchanged == 2 and again.stats.bytes_read == 0
    assert check_repository(Repository.open(repo.backend.location), read_data=True).ok
    prune(Repository.open(repo.backend.location), grace=timedelta(0), repack_below=1.0)
    out2 = tmp_path / "out2"
    out2.mkdir()
    assert restore_paths(Repository.open(repo.backend.location), second, ["/"], out2).ok
    assert (out2 / "lastlog").read_bytes() == content


def test_a_hole_longer_than_a_run_takes_several(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 2 * ZERO_RUN_MAX + 3 * MiB  # 2 GiB + 3 MiB, a few bytes of data in the middle
    _sparse(src / "big", size, [(ZERO_RUN_MAX + MiB, 10)])
    if _allocated(src / "big") > 64 * MiB:
        pytest.skip("this file system does not keep holes")
    repo = new_repo(tmp_path / "repo")
    result, point_id = _backup(repo, src)
    assert result.stats.bytes_read < 4 * MiB
    entry = _entry(repo, point_id, b"/big")
    runs = [n for i, n in zip(entry.chunks(), entry.chunk_lengths, strict=True) if i == ZERO_ID]
    assert len(runs) >= 3 and max(runs) == ZERO_RUN_MAX and sum(entry.chunk_lengths) == size
    tree = PointTree(repo, load_file_point(repo, point_id))
    f = tree.open("/big")
    f.seek(ZERO_RUN_MAX + MiB - 2)
    assert f.read(14)[2:12] == random.Random(23).randbytes(10)


def test_a_dense_file_is_read_whole(tmp_path: Path) -> None:
    """A file with every block allocated — zeros included — is read as before, no zero runs."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "dense").write_bytes(bytes(20 * MiB) + b"x")
    repo = new_repo(tmp_path / "repo")
    result, point_id = _backup(repo, src)
    assert result.stats.bytes_sparse == 0 and result.stats.bytes_read == 20 * MiB + 1
    assert ZERO_ID not in _entry(repo, point_id, b"/dense").chunks()


def test_runs_read_small_holes_with_their_neighbours() -> None:
    size = 10 * MIN_HOLE
    # data at 0.5 MiB (a leading hole under MIN_HOLE is read), a small gap, a big hole, data
    got = list(_runs(size, [(MIN_HOLE // 2, 100), (MIN_HOLE, 100), (5 * MIN_HOLE, 10)]))
    assert got == [(0, MIN_HOLE + 100, True), (MIN_HOLE + 100, 4 * MIN_HOLE - 100, False),
                   (5 * MIN_HOLE, 10, True), (5 * MIN_HOLE + 10, 5 * MIN_HOLE - 10, False)]
    # a trailing hole under MIN_HOLE is read with the data before it
    assert list(_runs(size, [(MIN_HOLE, size - MIN_HOLE - 100)])) == [
        (0, MIN_HOLE, False), (MIN_HOLE, size - MIN_HOLE, True)]
    assert list(_runs(size, [])) == [(0, size, False)]
    assert list(_runs(size, [(0, size)])) == [(0, size, True)]
    assert list(_runs(size, [(2 * MIN_HOLE, 10)])) == [
        (0, 2 * MIN_HOLE, False), (2 * MIN_HOLE, 10, True),
        (2 * MIN_HOLE + 10, size - 2 * MIN_HOLE - 10, False)]


def _point(lengths: list[int], ids: list[bytes]) -> FilePoint:
    from datetime import UTC, datetime

    entries = [FileEntry(b"/", "dir"),
               FileEntry(b"/f", "file", size=sum(lengths), chunk_ids=b"".join(ids),
                         chunk_lengths=lengths)]
    return FilePoint("p", datetime(2026, 12, 5, tzinfo=UTC), entries)


def test_zero_runs_are_bounded_stored_chunks_too() -> None:
    ok_id, data = encode_file_point(_point([ZERO_RUN_MAX, 10], [ZERO_ID, b"\1" * ID_SIZE]))
    assert len(decode_file_point(data, ok_id).entries) == 2
    for lengths, ids in (([ZERO_RUN_MAX + 1], [ZERO_ID]),
                         ([MAX_BLOB_SIZE + 1], [b"\1" * ID_SIZE])):
        point_id, data = encode_file_point(_point(lengths, ids))
        with pytest.raises(FormatError, match="implausible chunk length"):
            decode_file_point(data, point_id)


def test_each_kind_reads_its_own_versions() -> None:
    """File points are written as version 3; an image point may not claim 3, nor a file point 2
    (older readers accept 1 and 2 and would take a zero run for a missing chunk)."""
    _, data = encode_file_point(_point([5], [b"\1" * ID_SIZE]))
    header = json.loads(pq.read_schema(pa.BufferReader(data)).metadata[b"vmkeep"])
    assert header["version"] == 3
    base = {"format": "vmkeep-restore-point", "name": "n", "time": "2026-12-05T00:00:00+00:00",
            "disks": []}
    for kind, version, fine in (("files", 1, True), ("files", 3, True), ("files", 2, False),
                                ("image", 2, True), ("vm", 1, True), ("image", 3, False)):
        raw = json.dumps({**base, "kind": kind, "version": version})
        if fine:
            assert parse_header(raw, "m")["version"] == version
        else:
            with pytest.raises(FormatError, match="not a version of"):
                parse_header(raw, point_key("0" * 64))
