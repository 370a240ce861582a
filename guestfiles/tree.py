"""A file restore point as a read-only tree: lookup by path, directory listings, file streams.

:class:`PointTree` implements the ``EntrySource`` protocol of :mod:`vmkeep.disks.safe_restore`
(``stat`` / ``listdir`` / ``open``) over a decoded :class:`~vmkeep.storage.file_manifest.FilePoint`,
so restores reuse the hostile-name-safe writer.  Paths are ``/``-separated text; names that are not
UTF-8 map through ``surrogateescape`` (``os.fsdecode``), so they come back as the same bytes on a
POSIX host.  Nothing here touches the host file system.

File data is read chunk by chunk through :meth:`Repository.read_blob` (authenticated and bounded);
a missing or corrupt chunk surfaces as :class:`PointDataError` (a ``DiskError``, so the safe writer
reports that file and carries on) — the restore summary then lists it as ``read-error``.
"""

from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO

from vmkeep.disks.errors import DiskError, FsNotADirectoryError, FsNotFoundError
from vmkeep.disks.fs.base import Entry
from vmkeep.errors import UsageError
from vmkeep.storage.errors import StorageError
from vmkeep.storage.file_manifest import FileEntry, FilePoint
from vmkeep.storage.repository import Repository

_IFMT = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "chr": stat.S_IFCHR,
    "blk": stat.S_IFBLK,
    "sock": stat.S_IFSOCK,
}


class PointDataError(DiskError):
    """Cannot read {} from the restore point: {}"""


def normalize(path: str) -> str:
    """``/a/b`` form of a user-given path inside a point; ``..`` is refused, not resolved."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in path:
        raise UsageError(f"path {path!r}: '..' and NUL are not allowed inside a restore point")
    return "/" + "/".join(parts)


def to_entry(fe: FileEntry, name: str, path: str, row: int) -> Entry:
    """The safe writer's :class:`Entry` for a manifest row (hard links share an ``inode``)."""
    kind = fe.type if fe.type in ("file", "dir", "symlink") else "other"
    linked = fe.hardlink is not None and fe.type == "file"
    return Entry(
        name=name,
        path=path,
        type=kind,
        size=fe.size,
        mtime_ns=fe.mtime_ns,
        mode=_IFMT[fe.type] | (fe.mode or 0),
        uid=fe.uid if fe.uid is not None else 0,
        gid=fe.gid if fe.gid is not None else 0,
        link=os.fsdecode(fe.link) if fe.link is not None else None,
        inode=fe.hardlink if linked else None,
        nlink=max(2, fe.nlink) if linked else 1,
        kind="" if kind != "other" else fe.type,
    )


class ChunkStream(io.RawIOBase):
    """A file's content, read lazily chunk by chunk from the repository."""

    def __init__(self, repo: Repository, fe: FileEntry, where: str) -> None:
        self.repo, self.fe, self.where = repo, fe, where
        self.ids = fe.chunks()
        self.starts = []
        pos = 0
        for n in fe.chunk_lengths:
            self.starts.append(pos)
            pos += n
        self.pos = 0
        self._cur = -1
        self._data = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.fe.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _chunk(self, i: int) -> bytes:
        if i != self._cur:
            try:
                self._data = self.repo.read_blob(self.ids[i])
            except StorageError as exc:
                raise PointDataError(self.where, exc.get_message()) from exc
            self._cur = i
        return self._data

    def read(self, size: int = -1) -> bytes:
        end = self.fe.size if size is None or size < 0 else min(self.fe.size, self.pos + size)
        out = []
        while self.pos < end:
            i = _bisect(self.starts, self.pos)
            data = self._chunk(i)
            lo = self.pos - self.starts[i]
            piece = data[lo : lo + end - self.pos]
            out.append(piece)
            self.pos += len(piece)
        return b"".join(out)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _bisect(starts: list[int], pos: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= pos:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PointTree:
    """Read-only view of one file restore point (see the module docstring)."""

    def __init__(self, repo: Repository, point: FilePoint) -> None:
        self.repo, self.point = repo, point
        self.rows: dict[str, int] = {}
        self.children: dict[str, list[int]] = {}
        for i, e in enumerate(point.entries):
            path = os.fsdecode(e.path)
            self.rows[path] = i
            if e.type == "dir":
                self.children.setdefault(path, [])
            if path != "/":
                self.children.setdefault(path.rsplit("/", 1)[0] or "/", []).append(i)

    def row(self, path: str) -> int:
        row = self.rows.get(normalize(path))
        if row is None:
            raise FsNotFoundError(f"restore point {self.point.short_id}", path)
        return row

    def entry(self, row: int) -> Entry:
        fe = self.point.entries[row]
        path = os.fsdecode(fe.path)
        return to_entry(fe, path.rsplit("/", 1)[-1] or "/", path, row)

    def stat(self, path: str, follow: bool = False) -> Entry:
        return self.entry(self.row(path))

    def listdir(self, path: str = "/") -> list[Entry]:
        norm = normalize(path)
        rows = self.children.get(norm)
        if rows is None:
            self.row(norm)
            raise FsNotADirectoryError(f"restore point {self.point.short_id}", path)
        return [self.entry(r) for r in rows]

    def open(self, path: str, stream: str | None = None) -> BinaryIO:
        fe = self.point.entries[self.row(path)]
        if fe.type != "file":
            raise PointDataError(path, "not a regular file")
        return ChunkStream(self.repo, fe, path)  # type: ignore[return-value]
