"""The lab's NFS client: an NFS export mounted through libnfs (user space) as a FUSE folder.

An ESX host mounts a NAS datastore with its own NFS client; the lab does the same without a kernel
NFS mount: ``python -m vmkeep.lab.nfsmount URL MOUNTPOINT`` connects to ``URL``
(``nfs://HOST/PATH?version=4&nfsport=PORT``, libnfs's URL syntax) and serves the export at
``MOUNTPOINT`` until unmounted (``fusermount3 -u``) or sent SIGTERM.  Every read, write, create,
rename and unlink under the mount is one libnfs call over the wire (Debian ``libnfs13``, loaded with
ctypes), so the lab's datastore code (``/folder``, disks, storage vMotion) reads the NFS server's
bytes, not a local shortcut.  A failed connection exits 2 with libnfs's reason on stderr before
anything is mounted.  Nothing is cached on this side (attribute and entry timeouts 0): other
writers (the NFS server's own host) are seen at once.

libnfs's synchronous context is not thread-safe: all calls are serialised by one lock.  Every
FUSE open of one file shares one libnfs handle (see :meth:`NfsOps._share`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import sys
import threading
from typing import Any

import mfusepy as fuse

from vmkeep.disks.fuse_session import check_mountpoint, serve

#: largest single libnfs read (the server's rsize is usually 1 MiB)
IO_MAX = 1 << 20
#: largest single libnfs write: libnfs 4.0 (Debian 12) cannot encode an NFSv4 WRITE whose payload
#: nears 4 KiB ("ZDR error: Failed to encode COMPOUND4args"), so writes go in 2 KiB pieces
WRITE_MAX = 2048


class NfsError(OSError):
    pass


class _Stat64(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
        "atime", "mtime", "ctime", "atime_nsec", "mtime_nsec", "ctime_nsec", "used",
    )]


class _Url(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]


class _Dirent(ctypes.Structure):
    _fields_ = [("next", ctypes.c_void_p), ("name", ctypes.c_char_p), ("inode", ctypes.c_uint64)]


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("nfs") or "libnfs.so.13"
    lib = ctypes.CDLL(name)
    vp, cp, u64, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_int
    pvp = ctypes.POINTER(ctypes.c_void_p)
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "nfs_init_context": (vp, []),
        "nfs_destroy_context": (None, [vp]),
        "nfs_get_error": (cp, [vp]),
        "nfs_parse_url_dir": (ctypes.POINTER(_Url), [vp, cp]),
        "nfs_destroy_url": (None, [ctypes.POINTER(_Url)]),
        "nfs_mount": (i, [vp, cp, cp]),
        "nfs_stat64": (i, [vp, cp, ctypes.POINTER(_Stat64)]),
        "nfs_open": (i, [vp, cp, i, pvp]),
        "nfs_create": (i, [vp, cp, i, i, pvp]),
        "nfs_close": (i, [vp, vp]),
        "nfs_pread": (i, [vp, vp, u64, u64, vp]),
        "nfs_pwrite": (i, [vp, vp, u64, u64, cp]),
        "nfs_fsync": (i, [vp, vp]),
        "nfs_truncate": (i, [vp, cp, u64]),
        "nfs_mkdir": (i, [vp, cp]),
        "nfs_rmdir": (i, [vp, cp]),
        "nfs_unlink": (i, [vp, cp]),
        "nfs_rename": (i, [vp, cp, cp]),
        "nfs_opendir": (i, [vp, cp, pvp]),
        "nfs_readdir": (ctypes.POINTER(_Dirent), [vp, vp]),
        "nfs_closedir": (None, [vp, vp]),
    }
    for fname, (res, args) in sigs.items():
        fn = getattr(lib, fname)
        fn.restype, fn.argtypes = res, args
    return lib


class NfsClient:
    """One libnfs context mounted on ``url`` (thread-safe by one lock)."""

    def __init__(self, url: str) -> None:
        self.lib = _lib()
        self.lock = threading.Lock()
        self.ctx = self.lib.nfs_init_context()
        if not self.ctx:
            raise NfsError(errno.ENOMEM, "nfs_init_context failed")
        parsed = self.lib.nfs_parse_url_dir(self.ctx, url.encode())
        if not parsed:
            raise NfsError(errno.EINVAL, f"{url}: {self._error()}")
        try:
            server, path = parsed.contents.server, parsed.contents.path
            if self.lib.nfs_mount(self.ctx, server, path) != 0:
                raise NfsError(errno.EIO, f"mount {url}: {self._error()}")
        finally:
            self.lib.nfs_destroy_url(parsed)

    def _error(self) -> str:
        msg = self.lib.nfs_get_error(self.ctx)
        return msg.decode(errors="replace") if msg else "unknown error"

    def _check(self, rc: int, what: str) -> int:
        if rc < 0:
            raise NfsError(-rc, f"{what}: {self._error()}")
        return rc

    def stat(self, path: str) -> _Stat64:
        st = _Stat64()
        with self.lock:
            self._check(self.lib.nfs_stat64(self.ctx, path.encode(), ctypes.byref(st)), path)
        return st

    def listdir(self, path: str) -> list[str]:
        d = ctypes.c_void_p()
        names = []
        with self.lock:
            self._check(self.lib.nfs_opendir(self.ctx, path.encode(), ctypes.byref(d)), path)
            try:
                while True:
                    ent = self.lib.nfs_readdir(self.ctx, d)
                    if not ent:
                        break
                    names.append(ent.contents.name.decode("utf-8", "surrogateescape"))
            finally:
                self.lib.nfs_closedir(self.ctx, d)
        return names

    def open(self, path: str, flags: int, mode: int | None = None) -> int:
        fh = ctypes.c_void_p()
        with self.lock:
            if mode is not None:
                rc = self.lib.nfs_create(self.ctx, path.encode(), os.O_RDWR | os.O_CREAT, mode,
                                         ctypes.byref(fh))
            else:
                rc = self.lib.nfs_open(self.ctx, path.encode(), flags, ctypes.byref(fh))
            self._check(rc, path)
        return int(fh.value or 0)

    def close(self, fh: int) -> None:
        with self.lock:
            self.lib.nfs_close(self.ctx, ctypes.c_void_p(fh))

    def pread(self, fh: int, size: int, offset: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            want = min(IO_MAX, size - len(out))
            buf = ctypes.create_string_buffer(want)
            with self.lock:
                n = self._check(
                    self.lib.nfs_pread(self.ctx, ctypes.c_void_p(fh), offset + len(out), want, buf),
                    "read",
                )
            out += buf.raw[:n]
            if n < want:
                break
        return bytes(out)

    def pwrite(self, fh: int, data: bytes, offset: int) -> int:
        done = 0
        while done < len(data):
            part = data[done:done + WRITE_MAX]
            with self.lock:
                n = self._check(
                    self.lib.nfs_pwrite(self.ctx, ctypes.c_void_p(fh), offset + done, len(part),
                                        part),
                    "write",
                )
            if n == 0:
                raise NfsError(errno.EIO, "short write")
            done += n
        return done

    def fsync(self, fh: int) -> None:
        with self.lock:
            self._check(self.lib.nfs_fsync(self.ctx, ctypes.c_void_p(fh)), "fsync")

    def call(self, name: str, *paths: str, extra: tuple[Any, ...] = ()) -> None:
        with self.lock:
            fn = getattr(self.lib, name)
            self._check(fn(self.ctx, *(p.encode() for p in paths), *extra), " ".join(paths))


class NfsOps(fuse.Operations):
    """FUSE operations over an :class:`NfsClient` (see the module docstring)."""

    use_ns = True

    def __init__(self, client: NfsClient) -> None:
        self.nfs = client
        self.mu = threading.Lock()
        self.shared: dict[str, list[int]] = {}  # path -> [libnfs handle, FUSE opens]
        self.fhs: dict[int, str] = {}
        self.next_fh = 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = self.nfs.stat(path)
        return {
            "st_mode": st.mode, "st_nlink": st.nlink, "st_uid": 0, "st_gid": 0,
            "st_size": st.size, "st_ino": st.ino, "st_blocks": st.blocks,
            "st_atime": st.atime * 10**9 + st.atime_nsec,
            "st_mtime": st.mtime * 10**9 + st.mtime_nsec,
            "st_ctime": st.ctime * 10**9 + st.ctime_nsec,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        names = [n for n in self.nfs.listdir(path) if n not in (".", "..")]
        return [".", "..", *names]

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 30, "f_bfree": 1 << 29,
                "f_bavail": 1 << 29, "f_files": 1 << 20, "f_ffree": 1 << 19, "f_namemax": 255}

    def _share(self, path: str, opener: Any) -> int:
        """One libnfs handle per file, shared by every FUSE open of it (libnfs's NFSv4 client
        sends a CLOSE per handle, which ends the open state the other handles use too)."""
        with self.mu:
            entry = self.shared.get(path)
            if entry is None:
                entry = self.shared[path] = [opener(), 0]
            entry[1] += 1
            self.next_fh += 1
            self.fhs[self.next_fh] = path
            return self.next_fh

    def _nfsfh(self, fh: int) -> int:
        with self.mu:
            return int(self.shared[self.fhs[fh]][0])

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return self._share(path, lambda: self.nfs.open(path, os.O_RDWR, stat.S_IMODE(mode)))

    def open(self, path: str, flags: int) -> int:
        def opener() -> int:
            try:
                return self.nfs.open(path, os.O_RDWR)
            except OSError:
                return self.nfs.open(path, os.O_RDONLY)

        fh = self._share(path, opener)
        if flags & os.O_TRUNC:
            self.nfs.call("nfs_truncate", path, extra=(0,))
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.nfs.pread(self._nfsfh(fh), size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self.nfs.pwrite(self._nfsfh(fh), data, offset)

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        self.nfs.fsync(self._nfsfh(fh))

    def flush(self, path: str, fh: int) -> None:
        return None

    def release(self, path: str, fh: int) -> None:
        with self.mu:
            name = self.fhs.pop(fh)
            entry = self.shared[name]
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self.shared[name]
        self.nfs.close(int(entry[0]))

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self.nfs.call("nfs_truncate", path, extra=(length,))

    def mkdir(self, path: str, mode: int) -> None:
        self.nfs.call("nfs_mkdir", path)

    def rmdir(self, path: str) -> None:
        self.nfs.call("nfs_rmdir", path)

    def unlink(self, path: str) -> None:
        self.nfs.call("nfs_unlink", path)

    def rename(self, old: str, new: str) -> None:
        self.nfs.call("nfs_rename", old, new)

    def chmod(self, path: str, mode: int) -> None:
        return None

    def chown(self, path: str, uid: int, gid: int) -> None:
        return None

    def utimens(self, path: str, times: Any = None) -> None:
        return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m vmkeep.lab.nfsmount NFS-URL MOUNTPOINT", file=sys.stderr)
        return 2
    url, mountpoint = argv
    try:
        client = NfsClient(url)
    except OSError as exc:
        print(f"nfsmount: {exc}", file=sys.stderr)
        return 2
    check_mountpoint(mountpoint)
    ops = NfsOps(client)
    serve(
        lambda: fuse.FUSE(ops, mountpoint, foreground=True, nothreads=False, fsname="labnfs",
                          attr_timeout=0, entry_timeout=0, negative_timeout=0),
        ops, mountpoint, fuse.fuse_version_major,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
