"""Writing large objects with ``O_DIRECT`` on local file systems: no page-cache copy.

A pack written through the page cache costs the writer a kernel copy into freshly allocated
cache pages (13 % of a 4 GiB full image backup's CPU on the 2-core benchmark machine) and evicts
the backup server's cache for data that is not read again until a restore.  With ``O_DIRECT``
the device reads the bytes from our buffer: the same backup took 11.6–11.8 instead of
13.7–14.0 CPU-seconds (docs/performance.md).  Backup products write their repositories
unbuffered for the same reason.

Contract of :func:`write_direct`:

* the parts are copied into a page-aligned buffer (at most :data:`MAX_BUFFERS` in use, and as
  many kept idle for the next writes, sizes rounded up to :data:`GRANULE`); ``copied`` is
  called then — the caller may free the parts while the device writes; the aligned prefix is
  written with ``O_DIRECT``, the unaligned tail (< 4 KiB) through the page cache on the same
  descriptor;
* the caller still ``fsync``-s the file (file size and extent metadata, the device's cache);
* it is used only where it is known to work and pay: Linux, a regular local file system
  (ext4, XFS, Btrfs — checked with ``statfs``), objects of at least :data:`MIN_SIZE`, and not
  disabled with ``VMKEEP_DIRECT_IO=0``.  NFS, SMB, tmpfs, FUSE and anything unknown keep the
  buffered ``writev`` path.  A file system that refuses ``O_DIRECT`` at ``open`` (``EINVAL``)
  turns it off for that backend and the write is redone buffered.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import sys
import threading
from collections.abc import Callable, Sequence

from vmkeep.settings import settings

#: Alignment of ``O_DIRECT`` offsets, lengths and buffers (covers 512 B and 4 KiB sectors).
ALIGN = 4096
#: Smaller objects (indexes, manifests, locks) go through the page cache.
MIN_SIZE = 1024 * 1024
#: Aligned buffers in use at once, process-wide (a further write waits for one): bounds the
#: memory of packs being written once their parts were released.
MAX_BUFFERS = 3
#: Idle aligned buffers kept for reuse: all of them, so that a backup maps its buffers once.
POOL_KEEP = MAX_BUFFERS
#: Buffer sizes are rounded up to this: packs differ in size by up to a blob (32–33 MiB by
#: default), and a fresh 33 MiB map costs ~8,400 page faults (each page zeroed by the kernel);
#: unrounded, 9 of a 2 GiB image backup's 23 packs mapped a new buffer — 74,000 of its
#: 117,000 page faults (docs/performance.md, 2026-12-03).
GRANULE = 4 * 1024 * 1024
#: ``statfs`` magic numbers of the file systems ``O_DIRECT`` is used on (``linux/magic.h``).
LOCAL_FS_MAGIC = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
}

_pool: list[mmap.mmap] = []
_pool_lock = threading.Lock()
_in_use = threading.BoundedSemaphore(MAX_BUFFERS)


def enabled_by_env() -> bool:
    return settings().direct_io


def fs_magic(path: str) -> int | None:
    """The ``statfs`` ``f_type`` of the file system holding ``path`` (Linux), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on x86_64
        if libc.statfs(os.fsencode(path), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    width = ctypes.sizeof(ctypes.c_long)  # f_type is the first field, a __fsword_t (long)
    return int.from_bytes(buf.raw[:width], sys.byteorder, signed=False)


def supported(path: str) -> bool:
    """Whether objects under ``path`` may be written with ``O_DIRECT`` (see the module doc)."""
    return hasattr(os, "O_DIRECT") and enabled_by_env() and fs_magic(path) in LOCAL_FS_MAGIC


def _take(size: int) -> mmap.mmap:
    with _pool_lock:
        for i, buf in enumerate(_pool):
            if len(buf) >= size:
                return _pool.pop(i)
    # anonymous maps are page-aligned; private ones are plain memory (a shared one is shmem)
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    length = -(-size // GRANULE) * GRANULE
    return mmap.mmap(-1, length, flags=flags) if flags else mmap.mmap(-1, length)


def _give_back(buf: mmap.mmap) -> None:
    with _pool_lock:
        if len(_pool) < POOL_KEEP:
            _pool.append(buf)
            return
    buf.close()


def open_direct(path: str) -> int | None:
    """Create ``path`` (exclusively) for ``O_DIRECT`` writing; ``None`` when the file system
    refuses ``O_DIRECT`` (nothing is left behind then)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


def write_direct(
    fd: int, parts: Sequence[bytes | memoryview], copied: Callable[[], None] | None = None
) -> int:
    """Write ``b"".join(parts)`` at offset 0 of ``fd`` (opened by :func:`open_direct`); call
    ``copied`` once ``parts`` is no longer used; return the bytes written.  The descriptor is
    left without ``O_DIRECT``.  On an error the buffer is dropped rather than pooled (a
    traceback may still hold a view of it)."""
    total = sum(memoryview(p).nbytes for p in parts)
    with _in_use:
        buf = _take(total)
        with memoryview(buf) as view:
            pos = 0
            for part in parts:
                with memoryview(part) as src:
                    view[pos : pos + src.nbytes] = src.cast("B")
                    pos += src.nbytes
            if copied is not None:
                copied()
            aligned = total - total % ALIGN
            off = 0
            while off < aligned:
                off += _pwrite(fd, view, off, aligned)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)  # the tail is unaligned
            while off < total:
                off += _pwrite(fd, view, off, total)
        _give_back(buf)
    return total


def _pwrite(fd: int, view: memoryview, offset: int, end: int) -> int:
    with view[offset:end] as data:
        n = os.pwrite(fd, data, offset)
    if n <= 0:
        raise OSError(errno.EIO, "write returned 0")
    return n
