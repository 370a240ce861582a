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
  reading with the walk's ``lstat``.
* Metadata: type, mode, uid/gid and names, mtime/ctime (ns), inode, dev, nlink, size, symlink
  target, rdev, and extended attributes (``listxattr``; unsupported file systems give none).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterator
from functools import lru_cache
from typing import BinaryIO

from vmkeep.errors import InputError
from vmkeep.guestfiles.excludes import Excludes
from vmkeep.storage.file_backup import Warn
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

    def entry(self, path: bytes, st: os.stat_result) -> FileEntry:
        kind = _TYPES.get(stat.S_IFMT(st.st_mode), "file")
        e = FileEntry(
            path,
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            _user(st.st_uid),
            _group(st.st_gid),
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_dev,
            st.st_nlink,
            st.st_size if kind == "file" else 0,
        )
        if kind == "symlink":
            e.link = os.readlink(self.host_path(path))
        elif kind in ("chr", "blk"):
            e.rdev = st.st_rdev
        elif kind == "file" and st.st_nlink > 1:
            e.hardlink = -1  # the data path numbers the group
        return e

    def walk(self, warn: Warn) -> Iterator[FileEntry]:
        try:
            st = os.stat(self.root)
        except OSError as exc:
            raise InputError(f"{self.location}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{self.location}: not a directory")
        self._root_dev = st.st_dev
        yield self.entry(b"/", st)
        # Depth first with an explicit stack (no recursion limit): parents before children.
        stack = [iter(self._children(b"/", warn))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            entry, descend = item
            yield entry
            if descend:
                stack.append(iter(self._children(entry.path, warn)))

    def _children(self, dpath: bytes, warn: Warn) -> list[tuple[FileEntry, bool]]:
        """The directory's listed entries in name order, each with whether to descend."""
        try:
            with os.scandir(self.host_path(dpath)) as it:
                listing = sorted(it, key=lambda d: d.name)
        except OSError as exc:
            warn(_show(dpath), "unreadable-dir", exc.strerror or str(exc))
            return []
        prefix = b"" if dpath == b"/" else dpath
        out: list[tuple[FileEntry, bool]] = []
        for de in listing:
            path = prefix + b"/" + de.name
            try:
                st = de.stat(follow_symlinks=False)
                entry = self.entry(path, st)
            except OSError as exc:
                warn(_show(path), "unreadable", exc.strerror or str(exc))
                continue
            is_dir = entry.type == "dir"
            if self.excludes and self.excludes.match(os.fsdecode(path[1:]), is_dir):
                continue
            if is_dir and self.exclude_caches and is_cache_dir(self.host_path(path)):
                warn(_show(path), "excluded-cache", "CACHEDIR.TAG")
                continue
            descend = is_dir and not (self.one_file_system and st.st_dev != self._root_dev)
            out.append((entry, descend))
        return out

    def open(self, entry: FileEntry) -> BinaryIO:
        path = self.host_path(entry.path)
        try:
            fd = os.open(path, _OPEN | self._noatime)
        except PermissionError:
            if not self._noatime:
                raise
            fd = os.open(path, _OPEN)  # O_NOATIME needs ownership; retry without
        return os.fdopen(fd, "rb", buffering=0)

    def changed(self, entry: FileEntry, f: BinaryIO, nread: int) -> str | None:
        st = os.fstat(f.fileno())
        if nread != entry.size or st.st_size != entry.size:
            return f"size {entry.size} at walk, {st.st_size} now, {nread} read"
        if st.st_mtime_ns != entry.mtime_ns or st.st_ctime_ns != entry.ctime_ns:
            return "modified while read"
        return None

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
