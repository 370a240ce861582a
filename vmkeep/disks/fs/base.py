"""The common, read-only file-system interface over dissect parsers.

Contract:

- Paths use ``/``; they are resolved lexically *inside* the file system (``..`` never climbs
  above its root, absolute symlink targets restart at its root) — nothing on the host is ever
  touched.  Symlinks are followed for intermediate components (at most :data:`MAX_SYMLINKS`), and
  for the last component only where a method says so.
- :class:`Entry` describes one directory entry; ``type`` is ``file``, ``dir``, ``symlink`` or
  ``other`` (``kind`` refines ``other``: ``chr``, ``blk``, ``fifo``, ``sock``).  ``mode`` is the
  full ``st_mode`` (type and permission bits), ``mtime_ns`` nanoseconds since the epoch, ``inode``
  a number unique within the file system (hard links share it), ``streams`` the names of extra
  data streams (NTFS alternate data streams), ``elsewhere`` why a file's content is not in the
  volume to be read (Windows Data Deduplication, a cloud placeholder, EFS or fscrypt
  ciphertext…; opening it raises :class:`~vmkeep.disks.errors.FsContentElsewhereError` saying
  so), else empty.
- Drivers subclass :class:`FileSystem` and implement ``_root``, ``_iterdir``, ``_entry``,
  ``_open`` and ``_readlink``; every parser exception is turned into :class:`FileSystemError`
  (missing paths: :class:`FsNotFoundError`; walking a non-directory: :class:`FsNotADirectoryError`).
- Windows file systems (NTFS, FAT, exFAT: ``case_insensitive``) find a name in any case, as
  Windows does (``/WINDOWS/system32`` is ``/Windows/System32``): an exact match wins, else the
  first name in sorted order that matches case-folded; paths and entries returned carry the
  names as stored.
- Not thread-safe: callers serialise access (the FUSE tree holds a lock).
"""

from __future__ import annotations

import io
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from vmkeep.disks.errors import (
    DiskError,
    FileSystemError,
    FsLoopError,
    FsNotADirectoryError,
    FsNotASymlinkError,
    FsNotFoundError,
)
from vmkeep.lru import LRU

MAX_SYMLINKS = 40
DIR_CACHE_ENTRIES = 200_000  # children kept in the lookup cache, over all cached directories
Node = Any


@dataclass(frozen=True)
class Entry:
    """One directory entry of a guest file system."""

    name: str
    path: str
    type: str  # "file" | "dir" | "symlink" | "other"
    size: int
    mtime_ns: int
    mode: int
    uid: int = 0
    gid: int = 0
    link: str | None = None
    inode: int | None = None
    nlink: int = 1
    kind: str = ""
    streams: tuple[str, ...] = field(default=())
    elsewhere: str = ""
    #: extended attributes kept by a file backup, (name, value), shown as they were by a mount
    xattrs: tuple[tuple[str, bytes], ...] = field(default=())

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


def type_of_mode(mode: int) -> tuple[str, str]:
    """(type, kind) from an ``st_mode``."""
    fmt = stat.S_IFMT(mode)
    if fmt == stat.S_IFREG:
        return "file", ""
    if fmt == stat.S_IFDIR:
        return "dir", ""
    if fmt == stat.S_IFLNK:
        return "symlink", ""
    kinds = {stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock"}
    return "other", kinds.get(fmt, "unknown")


def split_path(path: str) -> list[str]:
    """Components of a ``/`` path, without empty and ``.`` parts (``..`` kept)."""
    return [p for p in path.split("/") if p not in ("", ".")]


def join(parent: str, name: str) -> str:
    return "/" + name if parent in ("", "/") else f"{parent}/{name}"


class GuardedStream(io.RawIOBase):
    """A read-only view of a parser's stream whose failures surface as :class:`FileSystemError`."""

    def __init__(self, inner: BinaryIO, fs_name: str, path: str) -> None:
        super().__init__()
        self.inner, self.fs_name, self.path = inner, fs_name, path
        self.size = getattr(inner, "size", None)

    def _fail(self, exc: Exception) -> FileSystemError:
        return FileSystemError(self.fs_name, f"{self.path}: {exc!r}")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        try:
            return bytes(self.inner.read(-1 if n is None else n))
        except FileSystemError:
            raise
        except Exception as exc:
            raise self._fail(exc) from exc

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        try:
            return int(self.inner.seek(pos, whence))
        except Exception as exc:
            raise self._fail(exc) from exc

    def tell(self) -> int:
        return int(self.inner.tell())


class FileSystem:
    """Base class of the read-only guest file systems (see the module docstring)."""

    fstype = "unknown"
    case_insensitive = False  # names looked up in any case (Windows file systems)

    def __init__(self, name: str) -> None:
        self.name = name
        self._dirs: LRU[str, dict[str, Node]] = LRU(DIR_CACHE_ENTRIES, weight=len)

    # -- driver hooks -----------------------------------------------------------------------
    def _root(self) -> Node:
        raise NotImplementedError

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        """Children of a directory node, without ``.`` and ``..``."""
        raise NotImplementedError

    def _entry(self, name: str, path: str, node: Node) -> Entry:
        raise NotImplementedError

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        raise NotImplementedError

    def _readlink(self, node: Node) -> str:
        raise NotImplementedError

    def _type(self, node: Node) -> str:
        """``file``, ``dir``, ``symlink`` or ``other``; drivers override with a cheaper test."""
        return self._entry("?", "", node).type

    def _children(self, dirpath: str, node: Node) -> dict[str, Node]:
        """Children of the directory at canonical ``dirpath`` (cached: the volume is read-only;
        on duplicate names the first entry wins)."""
        children = self._dirs.get(dirpath)
        if children is not None:
            return children
        children = {}
        for child_name, child in self._iterdir(node):
            children.setdefault(child_name, child)
        self._dirs.put(dirpath, children)
        return children

    # -- public API -------------------------------------------------------------------------
    @contextmanager
    def guard(self, path: str) -> Iterator[None]:
        """Turn parser exceptions into :class:`FileSystemError` for ``path``."""
        try:
            yield
        except FileSystemError:
            raise
        except Exception as exc:
            raise FileSystemError(self.name, f"{path}: {exc!r}") from exc

    def _resolve(self, path: str, follow_last: bool) -> tuple[str, str, Node]:
        """(canonical path, name, node) of ``path``."""
        todo = split_path(path)
        stack: list[tuple[str, Node]] = [("", self._root())]
        hops = 0
        while todo:
            comp = todo.pop(0)
            if comp == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            parent = stack[-1][1]
            if self._type(parent) != "dir":
                raise FsNotADirectoryError(self.name, path)
            dirpath = "/" + "/".join(name for name, _ in stack[1:])
            children = self._children(dirpath, parent)
            child = children.get(comp)
            if child is None and self.case_insensitive:
                comp = next((n for n in sorted(children) if n.casefold() == comp.casefold()),
                            comp)
                child = children.get(comp)
            if child is None:
                raise FsNotFoundError(self.name, path)
            if (todo or follow_last) and self._type(child) == "symlink":
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise FsLoopError(self.name, path)
                target = self._readlink(child)
                if target.startswith("/"):
                    stack = stack[:1]
                todo = split_path(target) + todo
                continue
            stack.append((comp, child))
        canonical = "/" + "/".join(name for name, _ in stack[1:])
        return canonical, stack[-1][0], stack[-1][1]

    def stat(self, path: str, follow: bool = False) -> Entry:
        """The entry at ``path`` (``lstat`` unless ``follow``)."""
        with self.guard(path):
            canonical, name, node = self._resolve(path, follow)
            return self._entry(name or "/", canonical, node)

    def listdir(self, path: str = "/") -> list[Entry]:
        """Entries of the directory at ``path`` (symlinks to directories are followed)."""
        with self.guard(path):
            canonical, _name, node = self._resolve(path, True)
            if self._type(node) != "dir":
                raise FsNotADirectoryError(self.name, path)
            children = self._children(canonical, node)
            return [self._entry(n, join(canonical, n), c) for n, c in children.items()]

    def open(self, path: str, stream: str | None = None) -> BinaryIO:
        """A read-only stream over the file at ``path`` (or its named data ``stream``)."""
        with self.guard(path):
            _, _name, node = self._resolve(path, True)
            if self._type(node) != "file":
                raise FileSystemError(self.name, f"{path}: not a regular file")
            return cast(BinaryIO, GuardedStream(self._open(node, stream), self.name, path))

    def open_listed(self, entry: Entry) -> BinaryIO:
        """:meth:`open` of a regular file a listing of this file system returned: its node is
        taken from the directory cache that listing filled (no walk down the path again, which
        checks every parent directory's inode); a directory no longer cached falls back to
        :meth:`open`."""
        if entry.type != "file":
            raise FileSystemError(self.name, f"{entry.path}: not a regular file")
        parent, _, name = entry.path.rpartition("/")
        children = self._dirs.get(parent or "/")
        node = children.get(name) if children is not None else None
        if node is None:
            return self.open(entry.path)
        with self.guard(entry.path):
            return cast(BinaryIO, GuardedStream(self._open(node, None), self.name, entry.path))

    def readlink(self, path: str) -> str:
        """The target of the symlink at ``path``, as stored."""
        with self.guard(path):
            _, _name, node = self._resolve(path, False)
            if self._type(node) != "symlink":
                raise FsNotASymlinkError(self.name, path)
            return self._readlink(node)

    def walk(
        self, path: str = "/", onerror: Callable[[str, DiskError], None] | None = None
    ) -> Iterator[tuple[str, list[Entry], list[Entry]]]:
        """Like ``os.walk`` (top-down, symlinks not followed): (dirpath, dirs, non-dirs).
        ``onerror(dirpath, error)``: a directory that cannot be listed (damaged) is reported
        there and skipped, and the walk goes on; without it the error is raised."""
        pending = [self.stat(path, follow=True).path]
        seen: set[int] = set()
        while pending:
            current = pending.pop()
            entries = self.listdir_or_report(current, onerror)
            if entries is None:
                continue
            dirs = [e for e in entries if e.type == "dir"]
            yield current, dirs, [e for e in entries if e.type != "dir"]
            for d in reversed(dirs):
                if d.inode is not None:
                    if d.inode in seen:  # a directory cycle in a corrupt file system
                        continue
                    seen.add(d.inode)
                pending.append(d.path)

    def listdir_or_report(
        self, path: str, onerror: Callable[[str, DiskError], None] | None
    ) -> list[Entry] | None:
        """:meth:`listdir`, or ``None`` once a directory that cannot be listed was reported to
        ``onerror`` (raised without one): the walks' rule for damaged directories."""
        try:
            return self.listdir(path)
        except DiskError as exc:
            if onerror is None:
                raise
            onerror(path, exc)
            return None

    def iter_entries(
        self, path: str = "/", onerror: Callable[[str, DiskError], None] | None = None
    ) -> Iterator[Entry]:
        """Every entry below ``path`` (directories before their contents); ``onerror`` as in
        :meth:`walk`."""
        for _, dirs, others in self.walk(path, onerror):
            yield from dirs
            yield from others

    def close(self) -> None:
        """Release the file system (the volume stream stays the caller's)."""
