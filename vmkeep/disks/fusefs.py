"""A read-only FUSE view of backed-up disks: raw disks plus browsable guest file systems.

Contract:

- ``DiskTree(disks)`` takes ``[(disk_name, file-like), ...]`` and lays out::

      /disks/<disk>.raw                 the whole disk, byte for byte
      /volumes/<disk>-<volume>/...      each volume whose file system we can read
                                        (LVM ``vg/lv`` becomes ``vg-lv``)

  Disk names must be plain names (no ``/``, NUL, ``.``/``..``).  Volumes that fail to open are
  left out and listed in ``tree.warnings``.
- ``RootTree(tree)`` shows one :class:`Browsable` tree at the mount's root: a file restore point
  (:class:`vmkeep.guestfiles.tree.PointTree`).
- :class:`TreeOps` is the ``mfusepy.Operations`` over a :class:`Layout` (which maps each path to
  a :class:`Folder` or :class:`Whole` file of its own, or a path :class:`Inside` a tree):
  read-only (writes get ``EROFS``), symlinks reported as symlinks (the kernel, not us, decides
  about following), NTFS alternate data streams exposed as ``user.<stream>`` extended attributes
  (up to 64 KiB), the extended attributes a file backup kept (``Entry.xattrs``) as they were;
  names unsafe on this host (:func:`~vmkeep.disks.restore_model.unsafe_name`) are not listed.
  Inode numbers (``use_ino``): one per file — hard links share it — unique across volumes, the
  same from ``getattr`` and ``readdir``.  All access is serialised by one lock because the disk
  streams are shared.
- ``mount(tree, mountpoint)`` blocks until unmounted and then returns normally: Ctrl-C, SIGTERM
  or SIGHUP to the process, or ``fusermount3 -u`` from outside, whichever libfuse (2 or 3) mfusepy
  loaded.  A bad mount folder raises :class:`~vmkeep.disks.errors.MountPointError` (exit code
  14); a mount FUSE cannot make or serve :class:`~vmkeep.disks.errors.FuseMountError` (exit code
  19).  How the signals are handled, and why, is in :mod:`vmkeep.disks.fuse_session`.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from itertools import count
from typing import Any, BinaryIO, Protocol

import mfusepy as fuse

from vmkeep.disks.errors import DiskError, FsNotADirectoryError, FsNotFoundError
from vmkeep.disks.fs import DRIVERS, FileSystem, open_filesystem
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.fuse_session import check_mountpoint, serve
from vmkeep.disks.image import stream_size
from vmkeep.disks.restore_model import is_utf8, unsafe_name
from vmkeep.disks.volumes import list_disks_volumes

MAX_XATTR = 64 * 1024


class Browsable(Protocol):
    """A read-only tree of entries: a guest file system (:class:`FileSystem`) or a file
    restore point.  Its errors are :class:`~vmkeep.disks.errors.DiskError` (not found, not a
    directory, unreadable)."""

    def stat(self, path: str, follow: bool = False) -> Entry: ...

    def listdir(self, path: str = "/") -> list[Entry]: ...

    def open(self, path: str, stream: str | None = None) -> BinaryIO: ...

    def readlink(self, path: str) -> str: ...


@dataclass(frozen=True)
class Folder:
    """A directory of the layout itself (``/``, ``/disks``, ``/volumes``)."""

    names: list[str]


@dataclass(frozen=True)
class Whole:
    """A file of the layout itself: a whole raw disk."""

    stream: BinaryIO
    size: int


@dataclass(frozen=True)
class Inside:
    """``path`` inside the tree ``fs``."""

    fs: Browsable
    path: str


Place = Folder | Whole | Inside


class Layout(Protocol):
    """What a mount shows: :meth:`place` of a path's components (``[]``: the root), or
    ``OSError(ENOENT)`` where nothing is."""

    def place(self, parts: list[str]) -> Place: ...


class DiskTree:
    """The disks-and-volumes layout of an image or VM point (see the module docstring)."""

    def __init__(self, disks: list[tuple[str, BinaryIO]]) -> None:
        self.disks: dict[str, tuple[BinaryIO, int]] = {}
        self.volumes: dict[str, FileSystem] = {}
        self.warnings: list[str] = []
        for name, fh in disks:
            if unsafe_name(name) or name in self.disks:
                raise ValueError(f"bad or duplicate disk name {name!r}")
            self.disks[name] = (fh, stream_size(fh))
        lists, errors = list_disks_volumes(disks)
        self.warnings.extend(errors)
        for name, vols in lists.items():
            self.warnings.extend(vols.warnings)
            for vol in vols:
                if vol.fs not in DRIVERS:
                    continue
                vname = f"{name}-{vol.name.replace('/', '-')}"
                try:
                    self.volumes[vname] = open_filesystem(vol.open(), vname, vol.fs)
                except DiskError as exc:
                    self.warnings.append(str(exc))

    def place(self, parts: list[str]) -> Place:
        if not parts:
            return Folder(["disks", "volumes"])
        if parts == ["disks"]:
            return Folder([f"{n}.raw" for n in self.disks])
        if parts == ["volumes"]:
            return Folder(list(self.volumes))
        if parts[0] == "disks" and len(parts) == 2 and parts[1].endswith(".raw"):
            disk = self.disks.get(parts[1][:-4])
            if disk is not None:
                return Whole(*disk)
        elif parts[0] == "volumes":
            fs = self.volumes.get(parts[1])
            if fs is not None:
                return Inside(fs, "/" + "/".join(parts[2:]))
        raise _oserror(errno.ENOENT)


class RootTree:
    """One tree shown at the mount's root (a file restore point)."""

    def __init__(self, tree: Browsable) -> None:
        self.tree = tree

    def place(self, parts: list[str]) -> Place:
        return Inside(self.tree, "/" + "/".join(parts))


def _dir_attrs(mtime_ns: int = 0) -> dict[str, Any]:
    return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_mtime": mtime_ns}


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _errno(exc: DiskError) -> int:
    """The errno a reader sees for a file system's error: not found, not a directory, else
    an I/O error (a damaged or unreadable guest file system)."""
    if isinstance(exc, FsNotFoundError):
        return errno.ENOENT
    if isinstance(exc, FsNotADirectoryError):
        return errno.ENOTDIR
    return errno.EIO


class TreeOps(fuse.Operations):
    """``mfusepy`` operations over a :class:`Layout`."""

    use_ns = True

    def __init__(self, tree: Layout) -> None:
        self.tree = tree
        self._mutex = threading.Lock()
        self.handles: dict[int, tuple[BinaryIO, int]] = {}  # handle -> (stream, its size)
        self.ids = count(1)
        self._inodes: dict[tuple[object, ...], int] = {}

    # -- path helpers -----------------------------------------------------------------------
    def _place(self, path: str) -> Place:
        return self.tree.place([p for p in path.split("/") if p])

    def _ino(self, path: str, fs: Browsable | None = None, e: Entry | None = None) -> int:
        """``st_ino`` of ``path`` (``e``: its entry in the file system ``fs``): one number per
        file, so hard links of one file share it (the guest file system's inode, a file point's
        hard-link group: ``cp -a``, ``rsync -H`` and ``du`` see them as one file) and files of
        two volumes never do.  Numbered on first sight, stable for the mount's life; readdir
        reports the same numbers as getattr."""
        if fs is not None and e is not None and e.inode is not None:
            key: tuple[object, ...] = ("inode", id(fs), e.inode)
        else:
            key = ("path", "/" + path.strip("/"))
        return self._inodes.setdefault(key, len(self._inodes) + 1)

    def _path_ino(self, path: str) -> int:
        """:meth:`_ino` of a path not listed by a file system here (a folder of the layout's,
        ``.``, ``..``): what getattr reports for it — or, where getattr fails (a volume root
        that cannot be read), a number of its own, so the folder still lists."""
        place = self._place(path)
        if isinstance(place, Inside):
            try:
                return self._ino(path, place.fs, self._entry(place.fs, place.path))
            except OSError:
                pass
        return self._ino(path)

    def _entry(self, fs: Browsable, inner: str) -> Entry:
        try:
            return fs.stat(inner)
        except DiskError as exc:
            raise _oserror(_errno(exc)) from exc

    # -- operations -------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            place = self._place(path)
            if isinstance(place, Folder):
                return {**_dir_attrs(), "st_ino": self._ino(path)}
            if isinstance(place, Whole):
                return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": place.size,
                        "st_ino": self._ino(path)}
            e = self._entry(place.fs, place.path)
            ino = self._ino(path, place.fs, e)
        mode = e.mode & ~0o222 if e.type != "symlink" else e.mode
        return {
            "st_ino": ino,
            "st_mode": mode,
            "st_nlink": max(1, e.nlink),
            "st_size": e.size,
            "st_uid": e.uid,
            "st_gid": e.gid,
            "st_mtime": e.mtime_ns,
            "st_atime": e.mtime_ns,
            "st_ctime": e.mtime_ns,
        }

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """Names with their ``st_ino`` (as getattr reports it: with ``use_ino`` an entry
        without one would read as inode 0, which directory readers skip)."""
        base = "/" + path.strip("/")
        with self._mutex:
            place = self._place(path)
            if isinstance(place, Folder):
                rows = [(name, self._path_ino(_join(base, name))) for name in place.names]
            elif isinstance(place, Whole):
                raise _oserror(errno.ENOTDIR)
            else:
                try:
                    rows = [(e.name, self._ino(_join(base, e.name), place.fs, e))
                            for e in place.fs.listdir(place.path) if not unsafe_name(e.name)]
                except DiskError as exc:
                    raise _oserror(_errno(exc)) from exc
            dots = [(".", self._path_ino(base)),
                    ("..", self._path_ino(base.rsplit("/", 1)[0] or "/"))]
        return [(name, {"st_ino": ino}, 0) for name, ino in [*dots, *rows]]

    def readlink(self, path: str) -> str:
        """The link's target; one holding an unpaired UTF-16 surrogate (an NTFS link to such a
        name) in its WTF-8 spelling — the bytes UTF-8 would give the code point — since no
        UTF-8 text spells it (it was ``EINVAL`` and a traceback in the mount's output)."""
        with self._mutex:
            place = self._place(path)
            if not isinstance(place, Inside):
                raise _oserror(errno.EINVAL)
            try:
                target = place.fs.readlink(place.path)
            except DiskError as exc:
                raise _oserror(errno.EINVAL) from exc
        try:
            target.encode("utf-8", "surrogateescape")  # as mfusepy encodes: bytes kept so too
        except UnicodeEncodeError:  # hand mfusepy the WTF-8 bytes, as escapes
            return target.encode("utf-8", "surrogatepass").decode("utf-8", "surrogateescape")
        return target

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise _oserror(errno.EROFS)
        with self._mutex:
            place = self._place(path)
            if isinstance(place, Whole):
                stream, size = place.stream, place.size
            elif isinstance(place, Inside):
                e = self._entry(place.fs, place.path)
                if e.type == "dir":
                    raise _oserror(errno.EISDIR)
                try:
                    stream, size = place.fs.open(place.path), e.size
                except DiskError as exc:
                    raise _oserror(_errno(exc)) from exc
            else:
                raise _oserror(errno.EISDIR)
            handle = next(self.ids)
            self.handles[handle] = (stream, size)
            return handle

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            opened = self.handles.get(fh)
            if opened is None:
                raise _oserror(errno.EBADF)
            stream, end = opened
            try:
                stream.seek(offset)
                data = stream.read(size)
            except DiskError as exc:
                raise _oserror(errno.EIO) from exc
        if len(data) < min(size, end - offset):  # the kernel would read zeros past a short read
            raise _oserror(errno.EIO)
        return data

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            self.handles.pop(fh, None)
        return 0

    def listxattr(self, path: str) -> list[str]:
        with self._mutex:
            place = self._place(path)
            if not isinstance(place, Inside):
                return []
            e = self._entry(place.fs, place.path)
        return [*(name for name, _ in e.xattrs),
                *(f"user.{s}" for s in e.streams if is_utf8(s))]  # the kernel takes UTF-8 only

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        with self._mutex:
            place = self._place(path)
            if not isinstance(place, Inside):
                raise _oserror(errno.ENODATA)
            e = self._entry(place.fs, place.path)
            kept = dict(e.xattrs).get(name)
            if kept is not None:
                data = kept
            elif name.startswith("user.") and name[5:] in e.streams:
                try:
                    data = place.fs.open(place.path, stream=name[5:]).read(MAX_XATTR + 1)
                except DiskError as exc:
                    raise _oserror(errno.EIO) from exc
            else:
                raise _oserror(errno.ENODATA)
        if len(data) > MAX_XATTR:
            raise _oserror(errno.E2BIG)
        return bytes(data)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_namemax": 255}


def mount(tree: Layout, mountpoint: str | os.PathLike[str]) -> None:
    """Mount ``tree`` read-only at the empty folder ``mountpoint``; blocks until unmounted.

    Call from the main thread (see :func:`vmkeep.disks.fuse_session.serve`).
    """
    path = os.fspath(mountpoint)
    check_mountpoint(path)
    ops = TreeOps(tree)
    serve(
        lambda: fuse.FUSE(
            ops,
            path,
            foreground=True,
            ro=True,
            nothreads=True,
            fsname="vmkeep",
            default_permissions=True,
            use_ino=True,  # TreeOps.getattr's st_ino: hard links stay one file
        ),
        ops,
        path,
        fuse.fuse_version_major,
    )
