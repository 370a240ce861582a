"""The local source: a directory tree on this machine (the worker runs inside or beside the guest).

Contract (see :class:`vmkeep.storage.file_backup.FileSource`):

* ``walk`` lists each directory once with ``os.scandir`` on byte paths (names are kept exactly,
  whatever their encoding) and ``lstat``\\ s every entry — symlinks are never followed; it yields
  entries parents first, siblings sorted by name bytes.  Unreadable directories are reported
  (``unreadable-dir``) and kept, empty.  Excluded entries are not listed; an excluded or
  ``CACHEDIR.TAG``-tagged directory (``exclude_caches``) is not descended into.  With
  ``one_file_system``, directories on another device are kept as empty mount points.
* ``open`` opens with ``O_NOFOLLOW`` (a file swapped for a symlink after the walk is unreadable,
  never read through) and ``O_NOATIME`` where permitted; ``changed`` compares ``fstat`` after
  reading with the walk's ``lstat``.  ``sparse_layout`` lists a file's data ranges when it has
  fewer blocks than bytes (:mod:`vmkeep.holes`), so large holes are not read.
* Metadata: type, mode, uid/gid and names, mtime/ctime (ns), inode, dev, nlink, size, symlink
  target, rdev, and extended attributes (``listxattr``; unsupported file systems give none).
"""

from __future__ import annotations

import grp
import io
import os
import pwd
import stat
from collections.abc import Iterator
from functools import lru_cache
from operator import attrgetter
from typing import BinaryIO

from vmkeep.errors import InputError
from vmkeep.guestfiles.excludes import Excludes
from vmkeep.guestfiles.proc_reader import Item, ProcessReader, changed, fd_xattrs, read_fd
from vmkeep.holes import data_ranges
from vmkeep.storage.file_backup import Row, Warn
from vmkeep.storage.file_manifest import FileEntry

CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "sock",
}
_NAME = attrgetter("name")
_NOATIME = getattr(os, "O_NOATIME", 0)
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@lru_cache(maxsize=4096)
def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def _group(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def is_cache_dir(path: bytes) -> bool:
    """Whether ``path`` holds a ``CACHEDIR.TAG`` with the standard signature."""
    try:
        with open(os.path.join(path, CACHEDIR_TAG), "rb") as f:
            return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False


class LocalSource:
    """A local directory tree as a file-backup source (see the module docstring)."""

    has_xattrs = hasattr(os, "listxattr")

    def __init__(
        self,
        root: str | os.PathLike[str],
        excludes: Excludes | list[str] | None = None,
        *,
        one_file_system: bool = False,
        exclude_caches: bool = True,
    ) -> None:
        self.root = os.fsencode(os.path.abspath(root))
        self.location = os.fsdecode(self.root)
        self.excludes = excludes if isinstance(excludes, Excludes) else Excludes(excludes or [])
        self.one_file_system = one_file_system
        self.exclude_caches = exclude_caches
        self._noatime = _NOATIME
        self._root_dev = 0

    def host_path(self, path: bytes) -> bytes:
        return self.root if path == b"/" else self.root + path

    def row(self, path: bytes, st: os.stat_result) -> Row:
        """The :data:`~vmkeep.storage.file_backup.Row` of one entry from its ``lstat``."""
        mode = st.st_mode
        fmt = stat.S_IFMT(mode)
        kind = _TYPES.get(fmt, "file")
        size, link, hardlink, rdev = 0, None, None, None
        if kind == "file":
            size = st.st_size
            if st.st_nlink > 1:
                hardlink = -1  # the data path numbers the group
        elif kind == "symlink":
            link = os.readlink(self.host_path(path))
        elif kind in ("chr", "blk"):
            rdev = st.st_rdev
        uid, gid = st.st_uid, st.st_gid
        return (path, kind, mode & 0o7777, uid, gid, _user(uid), _group(gid), st.st_mtime_ns,
                st.st_ctime_ns, st.st_ino, st.st_dev, st.st_nlink, size, link, hardlink, rdev)

    def entry(self, path: bytes, st: os.stat_result) -> FileEntry:
        return FileEntry(*self.row(path, st))

    def walk(self, warn: Warn) -> Iterator[FileEntry]:
        for row in self.scan(warn):
            yield FileEntry(*row)

    def scan(self, warn: Warn) -> Iterator[Row]:
        """The walk as :data:`~vmkeep.storage.file_backup.Row` tuples (no object per entry)."""
        try:
            st = os.stat(self.root)
        except OSError as exc:
            raise InputError(f"{self.location}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{self.location}: not a directory")
        self._root_dev = st.st_dev
        yield self.row(b"/", st)
        # Depth first with an explicit stack (no recursion limit): parents before children.
        stack = [iter(self._children(b"/", warn))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            row, descend = item
            yield row
            if descend:
                stack.append(iter(self._children(row[0], warn)))

    def _children(self, dpath: bytes, warn: Warn) -> list[tuple[Row, bool]]:
        """The directory's listed entries in name order, each with whether to descend.

        The hot loop of every backup: one cached ``lstat`` per entry and a tuple, nothing else
        for a regular file (the same fields as :meth:`row`, inlined).
        """
        try:
            with os.scandir(self.host_path(dpath)) as it:
                listing = sorted(it, key=_NAME)
        except OSError as exc:
            warn(_show(dpath), "unreadable-dir", exc.strerror or str(exc))
            return []
        prefix = (b"" if dpath == b"/" else dpath) + b"/"
        out: list[tuple[Row, bool]] = []
        excludes = self.excludes if self.excludes else None
        user, group, row_of, reg = _user, _group, self.row, stat.S_IFREG
        for de in listing:
            path = prefix + de.name
            try:
                st = de.stat(follow_symlinks=False)
                mode = st.st_mode
                if mode & 0o170000 == reg:
                    nlink, uid, gid = st.st_nlink, st.st_uid, st.st_gid
                    row: Row = (
                        path, "file", mode & 0o7777, uid, gid, user(uid), group(gid),
                        st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, nlink, st.st_size,
                        None, -1 if nlink > 1 else None, None,
                    )
                    if excludes is None or not excludes.match(os.fsdecode(path[1:]), False):
                        out.append((row, False))
                    continue
                row = row_of(path, st)
            except OSError as exc:
                warn(_show(path), "unreadable", exc.strerror or str(exc))
                continue
            is_dir = row[1] == "dir"
            if excludes is not None and excludes.match(os.fsdecode(path[1:]), is_dir):
                continue
            if is_dir and self.exclude_caches and is_cache_dir(self.host_path(path)):
                warn(_show(path), "excluded-cache", "CACHEDIR.TAG")
                continue
            descend = is_dir and not (self.one_file_system and st.st_dev != self._root_dev)
            out.append((row, descend))
        return out

    def open(self, entry: FileEntry) -> BinaryIO:
        path = self.host_path(entry.path)
        try:
            fd = os.open(path, _OPEN | self._noatime)
        except PermissionError:
            if not self._noatime:
                raise
            fd = os.open(path, _OPEN)  # O_NOATIME needs ownership; retry without
        return io.FileIO(fd, "rb")

    def sparse_layout(self, f: BinaryIO) -> tuple[int, list[tuple[int, int]]] | None:
        """``(size, data ranges)`` of an open file with holes (fewer blocks allocated than its
        size), asked from the file system; ``None`` for a dense file (read it whole)."""
        try:
            fd = f.fileno()
            st = os.fstat(fd)
        except (OSError, ValueError, AttributeError):  # a subclass's stream without a descriptor
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_blocks * 512 >= st.st_size:
            return None
        return st.st_size, list(data_ranges(fd, st.st_size))

    def read_small(
        self, entry: FileEntry, want_xattrs: bool
    ) -> tuple[bytes, str | None, list[tuple[bytes, bytes]] | None]:
        """Read a whole (small) file through :meth:`open`: ``(data, changed, xattrs)``.

        Same result as ``open`` + ``read`` + :meth:`changed` + :meth:`read_xattrs`, with fewer
        system calls: reads sized from the walk, one ``fstat``, xattrs from the open descriptor.
        ``OSError`` means unreadable.
        """
        with self.open(entry) as f:
            fd = f.fileno()
            xattrs = fd_xattrs(fd) if want_xattrs else None
            data = read_fd(fd, entry.size)
            return data, self._changed(entry, os.fstat(fd), len(data)), xattrs

    def changed(self, entry: FileEntry, f: BinaryIO, nread: int) -> str | None:
        return self._changed(entry, os.fstat(f.fileno()), nread)

    @staticmethod
    def _changed(entry: FileEntry, st: os.stat_result, nread: int) -> str | None:
        return changed(entry.size, entry.mtime_ns, entry.ctime_ns, st, nread)

    # -- reader processes (see vmkeep.guestfiles.proc_reader) --------------------------------
    def process_reader(self, key: bytes, level: int, cdc: dict[str, int]) -> ProcessReader | None:
        """Reader processes for this source, or ``None`` when a subclass changes how files are
        opened or read (its overrides must run here, in this process)."""
        cls = type(self)
        if (cls.open, cls.read_small, cls.changed, cls.read_xattrs) != (
            LocalSource.open, LocalSource.read_small, LocalSource.changed,
            LocalSource.read_xattrs,
        ):
            return None
        return ProcessReader(max(2, os.cpu_count() or 2), key, level, cdc, self._noatime)

    def process_item(self, entry: FileEntry, want_xattrs: bool) -> Item:
        return (self.host_path(entry.path), entry.size, entry.mtime_ns, entry.ctime_ns,
                want_xattrs)

    def read_xattrs(self, entry: FileEntry) -> list[tuple[bytes, bytes]] | None:
        path = self.host_path(entry.path)
        try:
            names = os.listxattr(path, follow_symlinks=False)
            out = [
                (os.fsencode(n), os.getxattr(path, n, follow_symlinks=False)) for n in names
            ]
        except OSError:
            return []
        return sorted(out)
