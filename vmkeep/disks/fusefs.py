"""A read-only FUSE view of backed-up disks: raw disks plus browsable guest file systems.

Contract:

- ``DiskTree(disks)`` takes ``[(disk_name, file-like), ...]`` and lays out::

      /disks/<disk>.raw                 the whole disk, byte for byte
      /volumes/<disk>-<volume>/...      each volume whose file system we can read
                                        (LVM ``vg/lv`` becomes ``vg-lv``)

  Disk names must be plain names (no ``/``, NUL, ``.``/``..``).  Volumes that fail to open are
  left out and listed in ``tree.warnings``.
- :class:`TreeOps` is the ``mfusepy.Operations`` over a tree: read-only (writes get ``EROFS``),
  symlinks reported as symlinks (the kernel, not us, decides about following), NTFS alternate data
  streams exposed as ``user.<stream>`` extended attributes (up to 64 KiB).  All access is
  serialised by one lock because the disk streams are shared.
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
from itertools import count
from typing import Any, BinaryIO

import mfusepy as fuse

from vmkeep.disks.errors import DiskError, FsNotADirectoryError, FsNotFoundError
from vmkeep.disks.fs import DRIVERS, FileSystem, open_filesystem
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.fuse_session import check_mountpoint, serve
from vmkeep.disks.image import stream_size
from vmkeep.disks.restore_model import unsafe_name
from vmkeep.disks.volumes import list_disks_volumes

MAX_XATTR = 64 * 1024


class DiskTree:
    """The directory layout shown by the FUSE mount (see the module docstring)."""

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


def _dir_attrs(mtime_ns: int = 0) -> dict[str, Any]:
    return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0, "st_mtime": mtime_ns}


def _oserror(code: int) -> OSError:
    return fuse.FuseOSError(code)


class TreeOps(fuse.Operations):
    """``mfusepy`` operations over a :class:`DiskTree`."""

    use_ns = True

    def __init__(self, tree: DiskTree) -> None:
        self.tree = tree
        self._mutex = threading.Lock()
        self.handles: dict[int, BinaryIO] = {}
        self.ids = count(1)

    # -- path helpers -----------------------------------------------------------------------
    def _split(self, path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    def _fs(self, parts: list[str]) -> tuple[FileSystem, str]:
        fs = self.tree.volumes.get(parts[1])
        if fs is None:
            raise _oserror(errno.ENOENT)
        return fs, "/" + "/".join(parts[2:])

    def _entry(self, fs: FileSystem, inner: str) -> Entry:
        try:
            return fs.stat(inner)
        except FsNotFoundError as exc:
            raise _oserror(errno.ENOENT) from exc
        except FsNotADirectoryError as exc:
            raise _oserror(errno.ENOTDIR) from exc
        except DiskError as exc:
            raise _oserror(errno.EIO) from exc

    # -- operations -------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        parts = self._split(path)
        with self._mutex:
            if len(parts) == 0 or parts in (["disks"], ["volumes"]):
                return _dir_attrs()
            if parts[0] == "disks" and len(parts) == 2 and parts[1].endswith(".raw"):
                disk = self.tree.disks.get(parts[1][:-4])
                if disk is None:
                    raise _oserror(errno.ENOENT)
                return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": disk[1]}
            if parts[0] == "volumes" and len(parts) >= 2:
                fs, inner = self._fs(parts)
                e = self._entry(fs, inner)
                mode = e.mode & ~0o222 if e.type != "symlink" else e.mode
                return {
                    "st_mode": mode,
                    "st_nlink": max(1, e.nlink),
                    "st_size": e.size,
                    "st_uid": e.uid,
                    "st_gid": e.gid,
                    "st_mtime": e.mtime_ns,
                    "st_atime": e.mtime_ns,
                    "st_ctime": e.mtime_ns,
                }
        raise _oserror(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        parts = self._split(path)
        with self._mutex:
            if not parts:
                names = ["disks", "volumes"]
            elif parts == ["disks"]:
                names = [f"{n}.raw" for n in self.tree.disks]
            elif parts == ["volumes"]:
                names = list(self.tree.volumes)
            elif parts[0] == "volumes":
                fs, inner = self._fs(parts)
                try:
                    names = [e.name for e in fs.listdir(inner) if not unsafe_name(e.name)]
                except FsNotFoundError as exc:
                    raise _oserror(errno.ENOENT) from exc
                except FsNotADirectoryError as exc:
                    raise _oserror(errno.ENOTDIR) from exc
                except DiskError as exc:
                    raise _oserror(errno.EIO) from exc
            else:
                raise _oserror(errno.ENOENT)
        return [".", "..", *names]

    def readlink(self, path: str) -> str:
        parts = self._split(path)
        if len(parts) < 3 or parts[0] != "volumes":
            raise _oserror(errno.EINVAL)
        with self._mutex:
            fs, inner = self._fs(parts)
            try:
                return fs.readlink(inner)
            except DiskError as exc:
                raise _oserror(errno.EINVAL) from exc

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise _oserror(errno.EROFS)
        parts = self._split(path)
        with self._mutex:
            if parts and parts[0] == "disks" and len(parts) == 2:
                disk = self.tree.disks.get(parts[1].removesuffix(".raw"))
                if disk is None:
                    raise _oserror(errno.ENOENT)
                stream = disk[0]
            elif parts and parts[0] == "volumes" and len(parts) >= 3:
                fs, inner = self._fs(parts)
                try:
                    stream = fs.open(inner)
                except DiskError as exc:
                    raise _oserror(errno.EIO) from exc
            else:
                raise _oserror(errno.EISDIR)
            handle = next(self.ids)
            self.handles[handle] = stream
            return handle

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            stream = self.handles.get(fh)
            if stream is None:
                raise _oserror(errno.EBADF)
            try:
                stream.seek(offset)
                return stream.read(size)
            except DiskError as exc:
                raise _oserror(errno.EIO) from exc

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            self.handles.pop(fh, None)
        return 0

    def listxattr(self, path: str) -> list[str]:
        parts = self._split(path)
        if len(parts) < 3 or parts[0] != "volumes":
            return []
        with self._mutex:
            fs, inner = self._fs(parts)
            return [f"user.{s}" for s in self._entry(fs, inner).streams]

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        parts = self._split(path)
        if len(parts) < 3 or parts[0] != "volumes" or not name.startswith("user."):
            raise _oserror(errno.ENODATA)
        with self._mutex:
            fs, inner = self._fs(parts)
            if name[5:] not in self._entry(fs, inner).streams:
                raise _oserror(errno.ENODATA)
            try:
                data = fs.open(inner, stream=name[5:]).read(MAX_XATTR + 1)
            except DiskError as exc:
                raise _oserror(errno.EIO) from exc
        if len(data) > MAX_XATTR:
            raise _oserror(errno.E2BIG)
        return bytes(data)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_namemax": 255}


def mount(tree: DiskTree, mountpoint: str | os.PathLike[str]) -> None:
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
        ),
        ops,
        path,
        fuse.fuse_version_major,
    )
