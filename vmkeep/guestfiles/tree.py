"""A file restore point as a read-only tree: lookup by path, directory listings, file streams.

:class:`PointTree` implements the ``EntrySource`` protocol of :mod:`vmkeep.disks.safe_restore`
(``stat`` / ``listdir`` / ``open``) over a decoded :class:`~vmkeep.storage.file_manifest.FilePoint`,
so restores reuse the hostile-name-safe writer.  Paths are ``/``-separated text; names that are not
UTF-8 map through ``surrogateescape`` (``os.fsdecode``), so they come back as the same bytes on a
POSIX host.  Nothing here touches the host file system.

File data is read chunk by chunk through :meth:`Repository.read_blob` (authenticated and bounded);
a missing or corrupt chunk surfaces as :class:`PointDataError` (a ``DiskError``, so the safe writer
reports that file and carries on) — the restore summary then lists it as ``read-error``.

Whole restores go through :meth:`PointTree.write_files` instead (the safe writer's batch mode):
the chunks of a batch of files are looked up in the index, sorted by pack and offset, and adjacent
ones coalesced into range reads (at most :data:`MAX_RANGE` bytes, gaps up to :data:`MAX_GAP`);
each range is read once, its blobs decoded and verified (decrypt, decompress, keyed hash) and
written with ``pwrite`` to every file (and offset) that uses them, ranges on :data:`WORKERS`
threads.  All-zero chunks and zero runs are left as holes.  A chunk that cannot be read fails only
the files that use it.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import BinaryIO

from vmkeep.disks.errors import (
    DiskError,
    FsNotADirectoryError,
    FsNotASymlinkError,
    FsNotFoundError,
)
from vmkeep.disks.fs.base import Entry
from vmkeep.point_paths import normalize
from vmkeep.storage.codec import ID_SIZE, ZERO_ID
from vmkeep.storage.errors import DataCorrupt, StorageError
from vmkeep.storage.file_manifest import FileEntry, FilePoint
from vmkeep.storage.index import BlobLocation
from vmkeep.storage.pack import pack_key
from vmkeep.storage.repository import Repository

#: Coalesced pack reads: at most this many bytes, bridging gaps of at most :data:`MAX_GAP`.
MAX_RANGE = 8 * 1024 * 1024
MAX_GAP = 256 * 1024
#: Threads reading, decoding and writing ranges.
WORKERS = 4
#: ``(descriptor, file offset, job number)`` places a blob is written to.
_Targets = list[tuple[int, int, int]]
#: One pack range: pack id, start, end, and its blobs with their locations and targets.
_Range = tuple[bytes, int, int, list[tuple[bytes, BlobLocation, _Targets]]]

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
        xattrs=tuple((os.fsdecode(n), v) for n, v in fe.xattrs or ()),
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
            lo = self.pos - self.starts[i]
            if self.ids[i] == ZERO_ID:  # a zero run (a hole): never fetched, never whole
                piece = bytes(min(self.fe.chunk_lengths[i] - lo, end - self.pos))
            else:
                data = self._chunk(i)
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

    def walk(
        self, path: str = "/", onerror: Callable[[str, DiskError], None] | None = None
    ) -> Iterator[tuple[str, list[Entry], list[Entry]]]:
        """Like :meth:`vmkeep.disks.fs.base.FileSystem.walk` (top-down): (dirpath, dirs,
        non-dirs).  A manifest lists every directory, so nothing fails to list; ``onerror`` is
        taken for the same signature."""
        pending = [normalize(path)]
        while pending:
            current = pending.pop()
            entries = self.listdir(current)
            dirs = [e for e in entries if e.type == "dir"]
            yield current, dirs, [e for e in entries if e.type != "dir"]
            pending.extend(d.path for d in reversed(dirs))

    def open_listed(self, entry: Entry) -> BinaryIO:
        """:meth:`open` of an entry a listing returned."""
        return self.open(entry.path)

    def readlink(self, path: str) -> str:
        """The target of the symlink at ``path``, as stored."""
        fe = self.point.entries[self.row(path)]
        if fe.type != "symlink" or fe.link is None:
            raise FsNotASymlinkError(f"restore point {self.point.short_id}", path)
        return os.fsdecode(fe.link)

    def holes(self, path: str) -> list[tuple[int, int]]:
        """``(offset, length)`` of the file's zero runs (the holes a sparse file kept at
        backup), adjacent runs joined, in order: a writer may skip them and leave holes."""
        fe = self.point.entries[self.row(path)]
        out: list[tuple[int, int]] = []
        pos, ids = 0, fe.chunk_ids
        for k, length in enumerate(fe.chunk_lengths):
            if ids[k * ID_SIZE : (k + 1) * ID_SIZE] == ZERO_ID:
                if out and sum(out[-1]) == pos:
                    out[-1] = (out[-1][0], out[-1][1] + length)
                else:
                    out.append((pos, length))
            pos += length
        return out

    def write_files(
        self,
        jobs: list[tuple[str, Entry, int]],
        progress: Callable[[int], None] | None = None,
        paths: list[str] | None = None,
    ) -> tuple[int, dict[str, tuple[str, str]]]:
        """The safe writer's batch API (see the module docstring): fill each job's descriptor
        with its file's content; ``paths`` (default: the jobs' own) are the point's paths.
        Returns ``(bytes written, {job path: (reason, detail)})``."""
        errors: dict[int, tuple[str, str]] = {}
        places: dict[bytes, _Targets] = {}
        for j, (spath, _entry, fd) in enumerate(jobs):
            fe = self.point.entries[self.row(paths[j] if paths else spath)]
            ids, pos = fe.chunk_ids, 0
            for k, length in enumerate(fe.chunk_lengths):
                blob_id = ids[k * ID_SIZE : (k + 1) * ID_SIZE]
                if blob_id != ZERO_ID:  # a zero run stays a hole (files are truncated to size)
                    places.setdefault(blob_id, []).append((fd, pos, j))
                pos += length
        index = self.repo.index
        located: list[tuple[bytes, int, bytes, BlobLocation]] = []
        for blob_id, targets in places.items():
            loc = index.get(blob_id)
            if loc is None:
                for _, _, j in targets:
                    errors[j] = ("read-error", f"chunk {blob_id.hex()[:16]} is not in the index")
            else:
                located.append((loc.pack_id, loc.offset, blob_id, loc))
        located.sort(key=lambda x: (x[0], x[1]))
        ranges: list[_Range] = []
        for pack_id, offset, blob_id, loc in located:
            end = offset + loc.stored_length
            last = ranges[-1] if ranges else None
            if (last is not None and last[0] == pack_id and offset - last[2] <= MAX_GAP
                    and end - last[1] <= MAX_RANGE and offset >= last[2]):
                ranges[-1] = (pack_id, last[1], end, last[3])
            else:
                ranges.append((pack_id, offset, end, []))
            ranges[-1][3].append((blob_id, loc, places[blob_id]))
        written = 0
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="vmkeep-restore") as pool:
            futures = [pool.submit(self._range, r) for r in ranges]
            for future in as_completed(futures):
                nbytes, failed = future.result()
                written += nbytes
                for j, error in failed:
                    errors.setdefault(j, error)
                if progress is not None and nbytes:
                    progress(nbytes)
        return written, {jobs[j][0]: error for j, error in errors.items()}

    def _range(self, rng: _Range) -> tuple[int, list[tuple[int, tuple[str, str]]]]:
        """Read one pack range, decode its blobs, write them; ``(bytes, [(job, error)])``."""
        pack_id, start, end, blobs = rng
        key = pack_key(pack_id)
        failed: list[tuple[int, tuple[str, str]]] = []
        try:
            data = self.repo.backend.get(key, start, end - start)
            if len(data) != end - start:
                raise DataCorrupt(key, f"pack truncated at offset {start}")
        except StorageError as exc:
            return 0, [(j, ("read-error", exc.get_message())) for b in blobs for _, _, j in b[2]]
        view = memoryview(data)
        written = 0
        for blob_id, loc, targets in blobs:
            at = loc.offset - start
            try:
                raw = self.repo.decode_located(  # follows compression units (version 4)
                    blob_id, loc, view[at : at + loc.stored_length], key
                )
            except StorageError as exc:
                failed.extend((j, ("read-error", exc.get_message())) for _, _, j in targets)
                continue
            if raw[:1] == b"\0" and raw == bytes(len(raw)):
                continue  # all zero: a hole (the file is truncated to its size afterwards)
            for fd, pos, j in targets:
                try:
                    _pwrite_all(fd, raw, pos)
                    written += len(raw)
                except OSError as exc:
                    failed.append((j, ("write-error", f"{exc.strerror or exc}")))
        return written, failed


def _pwrite_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n
