"""The columnar data path and restore: vectorised validation, hard-link groups, healing after a
lost pack, xattr reuse, batch restores across several batches and their per-file errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from vmkeep.disks.fs.base import Entry
from vmkeep.disks.safe_restore import restore
from vmkeep.guestfiles.backup import commit_file_point
from vmkeep.guestfiles.local import LocalSource
from vmkeep.guestfiles.restore import restore_paths
from vmkeep.guestfiles.tree import PointTree
from vmkeep.storage.errors import FormatError
from vmkeep.storage.file_backup import backup_files
from vmkeep.storage.file_manifest import (
    FileEntry,
    FilePoint,
    decode_file_point,
    encode_file_point,
    latest_file_point,
)
from vmkeep.storage.pack import pack_key
from vmkeep.storage.repository import Repository


def point_of(entries: list[FileEntry]) -> FilePoint:
    from datetime import UTC, datetime

    return FilePoint(name="p", time=datetime(2025, 1, 1, tzinfo=UTC), entries=entries)


@pytest.mark.parametrize(
    ("entries", "what"),
    [
        ([FileEntry(b"/", "dir"), FileEntry(b"/b", "dir"), FileEntry(b"/a", "dir")], "order"),
        ([FileEntry(b"/", "dir"), FileEntry(b"/a", "dir"), FileEntry(b"/a", "dir")], "order"),
        ([FileEntry(b"/", "dir"), FileEntry(b"/a", "file"), FileEntry(b"/a/b", "file")],
         "parent"),
        ([FileEntry(b"/", "dir"), FileEntry(b"/a", "file", hardlink=5)], "hard-link"),
        ([FileEntry(b"/", "dir"), FileEntry(b"/a", "file", hardlink=0)], "hard-link"),
        ([FileEntry(b"/", "dir"), FileEntry(b"/a", "bogus")], "type"),
        ([FileEntry(b"/a", "dir")], "root"),
        ([FileEntry(b"/", "dir"), FileEntry(b"/a", "dir", size=3, chunk_ids=bytes(32),
                                            chunk_lengths=[3])], "chunk lists"),
    ],
)
def test_forged_tables_are_rejected(entries: list[FileEntry], what: str) -> None:
    point_id, blob = encode_file_point(point_of(entries))
    with pytest.raises(FormatError, match=what):
        decode_file_point(blob, point_id)


def test_siblings_order_by_components_not_bytes() -> None:
    # "/a/b" sorts before "/a.x" by components although "." < "/" in bytes
    entries = [FileEntry(b"/", "dir"), FileEntry(b"/a", "dir"), FileEntry(b"/a/b", "file"),
               FileEntry(b"/a.x", "file")]
    point_id, blob = encode_file_point(point_of(entries))
    assert [e.path for e in decode_file_point(blob, point_id).entries] == [e.path for e in entries]


def backup(repo: Repository, src: Path, source: LocalSource | None = None) -> Any:
    parent = latest_file_point(repo, "c")
    result = backup_files(repo, source or LocalSource(src), parent)
    commit_file_point(repo, "c", result, source=str(src), client="t",
                      parent=parent.id if parent else None)
    return result


class FirstOfGroupFails(LocalSource):
    def open(self, entry: FileEntry) -> BinaryIO:
        if entry.path == b"/a1":
            raise PermissionError(13, "Permission denied")
        return super().open(entry)


def test_hard_link_groups_follow_their_first_file(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a1").write_bytes(b"group a")
    os.link(src / "a1", src / "a2")
    (src / "b").write_bytes(b"plain")
    (src / "c1").write_bytes(b"group c" * 100)
    os.link(src / "c1", src / "c2")
    result = backup(repo, src, FirstOfGroupFails(src))
    assert result.stats.unreadable == 2
    rows = {e.path: (i, e) for i, e in enumerate(latest_file_point(repo, "c").entries)}
    assert b"/a1" not in rows and b"/a2" not in rows
    c1, c2 = rows[b"/c1"], rows[b"/c2"]
    assert c1[1].hardlink == c1[0] and c2[1].hardlink == c1[0]
    assert c2[1].chunk_ids == c1[1].chunk_ids and c2[1].size == 700
    again = backup(repo, src)  # now everything reads; the c group is unchanged
    assert again.stats.files_unchanged >= 2 and again.stats.unreadable == 0
    out = tmp_path / "out"
    out.mkdir()
    summary = restore_paths(repo, "c@latest", ["/"], out)
    assert summary.ok and summary.hardlinks == 2
    assert os.stat(out / "a1").st_ino == os.stat(out / "a2").st_ino
    assert (out / "c2").read_bytes() == b"group c" * 100


def test_files_whose_pack_is_gone_are_read_again(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(1000 + i))
    backup(repo, src)
    for key, _ in list(repo.backend.list("packs")):
        repo.backend.delete(key)
    fresh = Repository.open(repo.backend.location)
    assert fresh.missing_packs or len(fresh.index) == 0
    result = backup(fresh, src)
    assert result.stats.files_read == 5 and result.stats.files_unchanged == 0
    out = tmp_path / "out"
    out.mkdir()
    assert restore_paths(fresh, "c@latest", ["/"], out).ok
    assert (out / "f3").read_bytes() == (src / "f3").read_bytes()


def test_xattrs_are_reused_only_while_the_ctime_holds(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_bytes(b"x")
    try:
        os.setxattr(src / "x", "user.k", b"v1")
    except OSError:
        pytest.skip("no user xattrs here")
    backup(repo, src)
    backup(repo, src)
    entries = latest_file_point(repo, "c").entries
    assert entries[1].xattrs == [(b"user.k", b"v1")]
    os.setxattr(src / "x", "user.k", b"v2")  # changes the ctime only
    backup(repo, src)
    entries = latest_file_point(repo, "c").entries
    assert entries[1].xattrs == [(b"user.k", b"v2")]


def test_batch_restore_over_several_batches_with_a_lost_chunk(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    for d in range(3):
        for i in range(20):
            p = src / f"d{d}" / f"f{i}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(50 + i) if i % 3 else bytes(4096))  # zero files: holes
    (src / "d0" / "victim").write_bytes(b"lost" * 500)
    backup(repo, src)
    point = latest_file_point(repo, "c")
    assert point is not None
    victim = next(e for e in point.entries if e.path == b"/d0/victim")
    loc = repo.index.get(victim.chunks()[0])
    assert loc is not None
    data = bytearray(repo.backend.get(pack_key(loc.pack_id)))
    data[loc.offset] ^= 0xFF  # corrupt the victim's chunk only
    path = Path(repo.backend.location) / pack_key(loc.pack_id)
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    tree = PointTree(repo, point)
    summary = restore(tree, out, "/", batch_files=7)
    assert [(w.path, w.reason) for w in summary.skipped] == [("/d0/victim", "read-error")]
    assert not (out / "d0" / "victim").exists()
    assert summary.files == 60
    for d in range(3):
        for i in range(20):
            rel = f"d{d}/f{i}"
            assert (out / rel).read_bytes() == (src / rel).read_bytes(), rel
    shutil.rmtree(out)


class Plain:
    """A two-file source without ``write_files`` (the streaming path) — and with it."""

    def __init__(self, batch: bool) -> None:
        self.batch = batch
        if batch:
            self.write_files = self._write_files

    def stat(self, path: str, follow: bool = False) -> Entry:
        return Entry(name="", path="/", type="dir", size=0, mtime_ns=0, mode=0o40755)

    def listdir(self, path: str = "/") -> list[Entry]:
        return [Entry(name=n, path="/" + n, type="file", size=3, mtime_ns=10**18, mode=0o100644,
                      inode=1 if n != "c" else None, nlink=2 if n != "c" else 1)
                for n in ("a", "b", "c")]

    def open(self, path: str, stream: str | None = None) -> BinaryIO:
        import io

        return io.BytesIO(b"abc")

    def _write_files(self, jobs: list[tuple[str, Entry, int]], progress: Any) -> Any:
        for _, _, fd in jobs:
            os.pwrite(fd, b"abc", 0)
        return 3 * len(jobs), {}


@pytest.mark.parametrize("batch", [False, True])
def test_batch_mode_matches_streaming(tmp_path: Path, batch: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "c").symlink_to("/etc/passwd")  # planted: never written through
    summary = restore(Plain(batch), out, "/", overwrite=True)
    assert summary.files == 2 and summary.hardlinks == 1 and not summary.skipped
    assert os.stat(out / "a").st_ino == os.stat(out / "b").st_ino
    assert not (out / "c").is_symlink() and (out / "c").read_bytes() == b"abc"
    assert os.stat(out / "a").st_mtime_ns == 10**18


def test_reader_processes_give_the_same_point(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vmkeep.storage.file_backup as file_backup

    src = tmp_path / "src"
    for i in range(40):
        p = src / f"d{i % 4}" / f"f{i}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(10 + i) if i % 2 else b"text " * (i + 1))
    (src / "big").write_bytes(os.urandom(3 << 20))  # cut into chunks in the child
    (src / "d0" / "f0").chmod(0)  # unreadable unless root
    threads = backup_files(repo, LocalSource(src))
    monkeypatch.setattr(file_backup, "PROCESS_AFTER", 0)
    procs = backup_files(repo, LocalSource(src))
    assert procs.table.equals(threads.table)
    assert procs.stats.files_read == threads.stats.files_read
    assert procs.stats.unreadable == threads.stats.unreadable
    assert procs.stats.bytes_new == 0  # everything was stored by the first run


def test_every_name_of_a_hard_link_is_counted_once(repo: Repository, tmp_path: Path) -> None:
    """new + changed + unchanged = files, as restic counts them: a hard link's second name
    (its content is the first's, not read again) was in none of them."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"one")
    os.link(src / "a", src / "b")
    first = backup(repo, src).stats
    counts = (first.files, first.files_new, first.files_changed, first.files_unchanged)
    assert counts == (2, 2, 0, 0)
    again = backup(repo, src).stats
    counts = (again.files, again.files_new, again.files_changed, again.files_unchanged)
    assert counts == (2, 0, 0, 2)
    (src / "a").write_bytes(b"two!")  # both names changed (one inode)
    os.link(src / "a", src / "c")  # and a third name
    changed = backup(repo, src).stats
    assert (changed.files, changed.files_new, changed.files_changed) == (3, 1, 2)
    assert changed.files_unchanged == 0 and changed.files_read == 1
