""":mod:`vmkeep.disks.dump` over small in-memory trees: what a tar stream holds and leaves out
(the end-to-end tests with real file systems: ``tests/restore/test_restore_to_stdout.py``)."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile

import pytest

from vmkeep.disks.dump import TarDump
from vmkeep.disks.errors import FsNotFoundError, RestoreError
from vmkeep.disks.fs.base import Entry
from vmkeep.storage.stream_out import StreamWriter

DIR = stat.S_IFDIR | 0o755


class Tree:
    """``{path: Entry}`` with file contents; ``short`` gives fewer bytes than the entry says."""

    def __init__(self, entries: list[Entry], data: dict[str, bytes]) -> None:
        self.entries = {e.path: e for e in entries}
        self.data = data

    def stat(self, path: str, follow: bool = False) -> Entry:
        if path == "/":
            return Entry("/", "/", "dir", 0, 0, DIR, inode=2)
        if path not in self.entries:
            raise FsNotFoundError("t", path)
        return self.entries[path]

    def listdir(self, path: str = "/") -> list[Entry]:
        parent = path.rstrip("/")
        return [e for p, e in self.entries.items() if p.rsplit("/", 1)[0] == parent]

    def open(self, path: str, stream: str | None = None) -> io.BytesIO:
        return io.BytesIO(self.data[path if stream is None else f"{path}:{stream}"])


def _dump(*trees: Tree) -> tuple[dict[str, tarfile.TarInfo], list[tuple[str, str]]]:
    read, write = os.pipe()
    with TarDump(StreamWriter(write)) as archive:
        for tree in trees:
            archive.add_tree(tree)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        data = fh.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
    return members, [(w.path, w.reason) for w in archive.summary.skipped]


def test_folders_of_two_volumes_with_the_same_inode_are_both_dumped() -> None:
    """Inode numbers are per file system: the second volume's ``data`` (inode 12, as the
    first's ``etc``) is not a cycle."""
    first = Tree([Entry("etc", "/etc", "dir", 0, 0, DIR, inode=12),
                  Entry("hosts", "/etc/hosts", "file", 3, 0, stat.S_IFREG | 0o644, inode=13)],
                 {"/etc/hosts": b"abc"})
    second = Tree([Entry("data", "/data", "dir", 0, 0, DIR, inode=12)], {})
    members, skipped = _dump(first, second)
    assert set(members) == {"etc", "etc/hosts", "data"} and skipped == []


def test_a_cycle_unsafe_names_and_special_files_are_left_out_and_listed() -> None:
    tree = Tree([Entry("d", "/d", "dir", 0, 0, DIR, inode=12),
                 Entry("loop", "/d/loop", "dir", 0, 0, DIR, inode=12),  # the folder again
                 Entry("..", "/d/..", "file", 0, 0, stat.S_IFREG | 0o644),
                 Entry("fifo", "/d/fifo", "other", 0, 0, stat.S_IFIFO | 0o644, kind="fifo"),
                 Entry("ok", "/d/ok", "symlink", 2, 0, stat.S_IFLNK | 0o777, link="..")],
                {})
    members, skipped = _dump(tree)
    assert set(members) == {"d", "d/ok"} and members["d/ok"].linkname == ".."
    assert sorted(skipped) == [("/d/..", "unsafe-name"), ("/d/fifo", "special-file"),
                               ("/d/loop", "directory-cycle")]


def test_a_file_shorter_than_its_size_stops_the_dump() -> None:
    """A tar member's size is in its header: a short file cannot end the member honestly."""
    tree = Tree([Entry("a", "/a", "file", 30_000, 0, stat.S_IFREG | 0o644),
                 Entry("f", "/f", "file", 10, 0, stat.S_IFREG | 0o644)],
                {"/a": b"a" * 30_000, "/f": b"abc"})
    read, write = os.pipe()
    try:
        with pytest.raises(RestoreError, match="ended 7 bytes before its size"), \
                TarDump(StreamWriter(write)) as archive:
            archive.add_tree(tree)
        os.close(write)
        with os.fdopen(read, "rb") as fh:
            written = fh.read()
    finally:
        for fd in (read, write):
            with contextlib.suppress(OSError):
                os.close(fd)
    assert b"a" * 512 in written  # what came before went out
    assert not written.endswith(bytes(1024))  # no end-of-archive blocks after half a member


def test_streams_and_attributes_no_extended_attribute_can_hold_are_listed() -> None:
    """The file is written with what can be kept: a stream over 64 KiB or named with an
    unpaired UTF-16 surrogate, and an attribute whose name is not UTF-8, are listed instead."""
    name = "f.txt"
    tree = Tree([Entry(name, "/f.txt", "file", 3, 0, stat.S_IFREG | 0o644,
                       streams=("ok", "big", "\ud800x"),
                       xattrs=(("user.tag", b"v"), (os.fsdecode(b"user.\xff"), b"w")))],
                {"/f.txt": b"abc", "/f.txt:ok": b"kept", "/f.txt:big": bytes(65 * 1024 + 1)})
    members, skipped = _dump(tree)
    assert {k: v for k, v in members[name].pax_headers.items() if "xattr" in k} == {
        "SCHILY.xattr.user.tag": "v", "SCHILY.xattr.user.ok": "kept"}
    assert sorted(skipped) == [("/f.txt", "stream-error"), ("/f.txt", "stream-error"),
                               ("/f.txt", "xattr")]
