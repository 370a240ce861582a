"""The directory an instant-restore NFS export serves: a writable passthrough FUSE view.

ESX wants a datastore folder holding each disk as a descriptor (``NAME.vmdk``) *beside* its flat
extent (``NAME-flat.vmdk``), and writes files of its own there (the ``.vmx``, logs, swap).  The
restore point's disks are block devices (nbdkit exports with a copy-on-write overlay, each shown
as one file by ``nbdfuse``), which cannot share a folder with anything.  :class:`ViewOps` joins
them: a passthrough of a real local folder (``store``), where every path named in ``extents``
is served instead by the file it maps to (an nbdfuse file; reads fetch the repository chunks,
writes land in nbdkit's overlay).  nfs-ganesha's FSAL_VFS then exports the mount.

Contract:

- Everything outside ``extents`` is an ordinary file or folder under ``store`` (create, write,
  rename, unlink, mkdir, rmdir, truncate, chmod pass through).
- An extent keeps its size (truncate to another size is ``EPERM``); unlinking it hides it from
  the view (storage vMotion deletes the source after the copy), never touches the export.
- nfs-ganesha's file handles are the kernel's FUSE handles, valid while the view is mounted.
- :func:`mount` blocks until unmounted (SIGTERM/SIGINT/``fusermount3 -u``), like
  :func:`vmkeep.disks.fusefs.mount`.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import mfusepy as fuse

from vmkeep.disks.fuse_session import check_mountpoint, serve

EXTENT_INO_BASE = 1 << 60


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class ViewOps(fuse.Operations):
    """Passthrough of ``store`` with ``extents`` overlaid (see the module docstring)."""

    use_ns = True

    def __init__(self, store: str, extents: dict[str, str]) -> None:
        self.store = os.path.abspath(store)
        self.extents = {"/" + k.strip("/"): v for k, v in extents.items()}
        self.hidden: set[str] = set()
        self.ino = {p: EXTENT_INO_BASE + i for i, p in enumerate(sorted(self.extents))}

    # -- helpers ----------------------------------------------------------------------------
    def _extent(self, path: str) -> str | None:
        if path in self.extents and path not in self.hidden:
            return self.extents[path]
        return None

    def _real(self, path: str) -> str:
        if path in self.extents and path not in self.hidden:
            return self.extents[path]
        return os.path.join(self.store, path.lstrip("/"))

    def _children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return [
            p[len(prefix):] for p in self.extents
            if p not in self.hidden and p.startswith(prefix) and "/" not in p[len(prefix):]
        ]

    # -- attributes and folders ---------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        real = self._real(path)
        st = os.lstat(real)
        attrs = {k: getattr(st, k) for k in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns",
            "st_mtime_ns", "st_ctime_ns", "st_ino", "st_blocks",
        )}
        for k in ("st_atime", "st_mtime", "st_ctime"):
            attrs[k] = attrs.pop(k + "_ns")
        if self._extent(path) is not None:
            attrs["st_ino"] = self.ino[path]
            attrs["st_mode"] = 0o100644
            attrs["st_uid"] = attrs["st_gid"] = 0
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        names = set(os.listdir(self._real(path)))
        names.update(self._children(path))
        return [".", "..", *sorted(names)]

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.store)
        return {k: getattr(st, k) for k in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
            "f_namemax",
        )}

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._real(path), mode)

    def rmdir(self, path: str) -> None:
        if self._children(path):
            raise _oserror(errno.ENOTEMPTY)
        os.rmdir(self._real(path))

    def chmod(self, path: str, mode: int) -> None:
        if self._extent(path) is None:
            os.chmod(self._real(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        if self._extent(path) is None:
            os.lchown(self._real(path), uid, gid)

    def utimens(self, path: str, times: Any = None) -> None:
        if self._extent(path) is None:
            os.utime(self._real(path), ns=times)

    def access(self, path: str, amode: int) -> None:
        if not os.access(self._real(path), amode):
            raise _oserror(errno.EACCES)

    # -- files ------------------------------------------------------------------------------
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        if self._extent(path) is not None:
            raise _oserror(errno.EEXIST)
        return os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)

    def open(self, path: str, flags: int) -> int:
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
        if self._extent(path) is not None:
            flags &= ~os.O_TRUNC
        return os.open(self._real(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if self._extent(path) is not None and offset + len(data) > os.fstat(fh).st_size:
            raise _oserror(errno.ENOSPC)
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        real = self._real(path)
        if self._extent(path) is not None:
            if length != os.stat(real).st_size:
                raise _oserror(errno.EPERM)
            return
        os.truncate(real, length)

    def flush(self, path: str, fh: int) -> None:
        return None

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        os.fsync(fh)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def unlink(self, path: str) -> None:
        if self._extent(path) is not None:
            self.hidden.add(path)
            return
        os.unlink(self._real(path))

    def rename(self, old: str, new: str) -> None:
        if self._extent(old) is not None or self._extent(new) is not None:
            raise _oserror(errno.EPERM)
        os.rename(self._real(old), self._real(new))


def mount(store: str, extents: dict[str, str], mountpoint: str) -> None:
    """Serve the view at the empty folder ``mountpoint``; blocks until unmounted."""
    check_mountpoint(mountpoint)
    ops = ViewOps(store, extents)
    serve(
        lambda: fuse.FUSE(
            ops, mountpoint, foreground=True, nothreads=False, fsname="vmkeep-instant",
        ),
        ops,
        mountpoint,
        fuse.fuse_version_major,
    )


def main(argv: list[str]) -> int:
    """``python -m vmkeep.browse.instant_view STORE MOUNTPOINT [REL=FILE ...]``."""
    if len(argv) < 2:
        print("usage: python -m vmkeep.browse.instant_view STORE MOUNTPOINT [REL=FILE ...]",
              file=sys.stderr)
        return 2
    extents = dict(item.split("=", 1) for item in argv[2:])
    mount(argv[0], extents, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
