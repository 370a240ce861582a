"""Restore a backed-up disk to a raw image file (bit-identical), fast and sparse.

Chunks stored back to back in a pack are fetched together (:mod:`vmkeep.storage.spans`: one
``get`` of up to 8 MiB instead of one per chunk, so a repository that is not in the page cache
is read in large sequential requests), decoded and authenticated (keyed BLAKE3) on ``workers``
threads, at most :data:`SPANS_PER_WORKER` × ``workers`` spans in flight, and written with
``pwrite`` in order by the calling thread (one writer: concurrent ``pwrite`` calls into one file
contend for its inode lock and measured slower).
All-zero chunks are never written: the output is a fresh file, sized by ``ftruncate`` before
anything is fetched (so a size the target cannot hold fails at once, typed), and they stay
holes.  Write-back to the disk is started while the restore runs (a flusher
thread ``fdatasync``-s every :data:`FLUSH_EVERY` bytes written), so the final ``fsync`` does not
wait for the whole image.  The output is written to a temporary name beside the target
(:mod:`vmkeep.storage.partial_files`) and renamed into place only when complete and fsync'ed, so
a failed or killed restore never leaves a plausible-looking partial image under the requested
name; the temporaries a killed restore of the same target left are removed by the next one.

Targets (checked before anything is fetched, typed errors with exit code 15): the folder must
exist and be writable; an existing target is replaced only with ``overwrite`` and only if it is
a regular file or a symlink (the link itself is replaced, never followed) that does not lead to
a block device; anything else — a block or character device, a FIFO, a socket, a directory —
is refused, so a device node is never replaced by a regular file nor written into by
:func:`restore_disk`.  Writing a disk into a block device is :func:`restore_disk_to_device`'s
job, asked for explicitly (``vmkeep restore image --device``): in place, every byte written
(zeros included), not atomic.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

from blake3 import blake3

from vmkeep.storage import stream_out
from vmkeep.storage.codec import CODEC_RECIPE, ZERO_ID, keep_freed_buffers
from vmkeep.storage.errors import (
    DataCorrupt,
    RestoreDeviceBusy,
    RestoreDeviceIncomplete,
    RestoreTargetError,
    RestoreTargetExists,
    RestoreTargetIsDevice,
    RestoreTargetMissing,
    RestoreTargetNotDevice,
    RestoreTargetNotRegular,
    RestoreTargetNotWritable,
    RestoreTooLarge,
    StorageError,
)
from vmkeep.storage.manifest import ChunkTable, RestorePoint
from vmkeep.storage.partial_files import part_name, remove_stale_beside
from vmkeep.storage.repository import Repository
from vmkeep.storage.spans import fetch_span, plan_spans, read_recipes
from vmkeep.storage.stream_out import STDOUT_FD, STDOUT_NAME, StreamWriter

#: Bytes written between two background ``fdatasync`` calls.
FLUSH_EVERY = 64 * 1024 * 1024
#: Spans fetched ahead per worker.  A repository that is not in the page cache is read while
#: the restore's own write-back keeps the disk busy: 4 per worker measured 8.2–8.4 s against
#: 9.1 s with 2 for the 4 GiB benchmark image (no change when the packs are cached), for
#: ~50 MB more memory (a span is at most 8 MiB stored, 16 MiB decoded);
#: ``bench/bench_image_restore.py --cold --spans-per-worker N`` measures it.
SPANS_PER_WORKER = 4


class _Flusher:
    """Starts write-back of a file being written in order, on its own thread; see the module
    docstring.  Pages it has made durable are dropped from the page cache
    (``POSIX_FADV_DONTNEED``): a restore does not evict the rest of the cache for data nobody
    reads next, and new pages come from free memory instead of reclaim — measured 8.8 → 6.2
    CPU-seconds and 11–14 → 7–8.5 s for the 4 GiB benchmark image.

    An error of a background ``fdatasync`` is kept and re-raised by :meth:`close`: the kernel
    reports a write-back error only once per open file, so the final ``fsync`` might miss it.
    """

    def __init__(self, fd: int, every: int | None = None) -> None:
        self.fd = fd
        self.every = FLUSH_EVERY if every is None else every
        self.error: OSError | None = None
        self._pending = 0
        self._end = 0  # every byte below this offset has been written (or is a hole)
        self._dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="vmkeep-flush", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int, end: int) -> None:
        """Record a write of ``nbytes`` ending at ``end`` (writes come in offset order)."""
        with self._lock:
            self._pending += nbytes
            self._end = max(self._end, end)
            if self._pending < self.every:
                return
            self._pending = 0
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            with self._lock:
                end = self._end
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                self.error = exc
                return
            if hasattr(os, "posix_fadvise") and end > self._dropped:
                with contextlib.suppress(OSError):  # advice only
                    os.posix_fadvise(
                        self.fd, self._dropped, end - self._dropped, os.POSIX_FADV_DONTNEED
                    )
                self._dropped = end

    def close(self) -> None:
        """Stop the thread; raise the first background write-back error, if any."""
        self._stop = True
        self._wake.set()
        self._thread.join()
        if self.error is not None:
            raise self.error


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _size_output(fd: int, size: int, target: str, disk: int) -> None:
    """Give the (empty) output its final size before any data is fetched: a sparse
    ``ftruncate`` allocates nothing, and a size the target file system cannot hold (a forged
    manifest claiming 32 TiB on ext4, whose limit is 16 TiB) fails here at once as
    :class:`RestoreTooLarge` instead of as an ``OSError`` after the data was written."""
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno in (errno.EFBIG, errno.EINVAL, errno.ENOSPC, errno.EDQUOT):
            raise RestoreTooLarge(target, disk, size, exc.strerror or str(exc)) from None
        raise


_KINDS = {
    stat.S_IFBLK: "block device",
    stat.S_IFCHR: "character device",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "directory",
}


def repository_around(repo_location: str, path: str) -> str | None:
    """The local repository's folder when the local ``path`` lies inside the local repository
    at ``repo_location`` (or is it), else ``None``.  Remote repositories and paths cannot
    overlap a local path."""
    if ("://" in repo_location and not repo_location.startswith("file://")) or "://" in path:
        return None
    root = os.path.realpath(repo_location.removeprefix("file://"))
    here = os.path.realpath(path)
    return root if here == root or here.startswith(root.rstrip(os.sep) + os.sep) else None


def refuse_inside_repository(repo_location: str, target: str) -> None:
    """:class:`RestoreTargetError` when the local ``target`` lies inside the local repository at
    ``repo_location`` (a restore would write among its objects: a file in ``packs/`` or
    ``index/`` is taken for damage, one at the top is clutter)."""
    if target == "-":  # standard output
        return
    if (root := repository_around(repo_location, target)) is not None:
        raise RestoreTargetError(
            target, f"it lies inside the repository {root}: restore somewhere else"
        )


def check_target(target: str, overwrite: bool) -> None:
    """Refuse a target :func:`restore_disk` must not write (see the module docstring)."""
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise RestoreTargetMissing(target, folder)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise RestoreTargetError(target, exc.strerror or str(exc)) from None
    if st is not None:
        if stat.S_ISBLK(st.st_mode) or (stat.S_ISLNK(st.st_mode) and _links_to_a_device(target)):
            raise RestoreTargetIsDevice(target)  # --device writes into it (restore_disk_to_device)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is not None:
            raise RestoreTargetNotRegular(target, kind)
        if not overwrite:
            raise RestoreTargetExists(target)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RestoreTargetNotWritable(target, folder)


def _links_to_a_device(link: str) -> bool:
    """Whether the symlink ``link`` resolves to a block device (``/dev/disk/by-id/…``,
    ``/dev/VG/LV``): ``--overwrite`` would replace such a link by a regular file."""
    try:
        return stat.S_ISBLK(os.stat(link).st_mode)
    except OSError:
        return False


def make_target_folder(folder: str) -> None:
    """Create the restore folder ``folder`` (and its parents) if missing; typed errors (exit
    code 15) when it cannot be: read-only, permission denied, a file in the way."""
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise RestoreTargetError(folder, "exists and is not a folder") from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RestoreTargetNotWritable(folder, exc.filename or folder) from None
        raise RestoreTargetError(folder, exc.strerror or str(exc)) from None


@contextlib.contextmanager
def target_folder(folder: str, *, remove_after: bool = False) -> Iterator[None]:
    """:func:`make_target_folder` for the block; when the block raises — or, with
    ``remove_after``, whenever it ends (a mount point) — the folders it created are removed
    again while they are empty (deepest first), so a restore refused before it wrote anything —
    a volume or path that does not exist — leaves nothing behind.  Folders that existed before,
    or that hold anything, stay."""
    created: list[str] = []
    here = os.path.abspath(folder)
    while not os.path.lexists(here):
        created.append(here)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    make_target_folder(folder)
    try:
        yield
    except BaseException:
        _remove_empty(created)
        raise
    if remove_after:
        _remove_empty(created)


def _remove_empty(created: list[str]) -> None:
    for path in created:  # deepest first
        try:
            os.rmdir(path)
        except OSError:
            break


def _create_temp(target: str) -> tuple[str, int]:
    directory = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(directory, part_name(os.path.basename(target)))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise RestoreTargetMissing(target, directory) from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RestoreTargetNotWritable(target, directory) from None
        raise RestoreTargetError(target, exc.strerror or str(exc)) from None
    return tmp, fd


def _replace(tmp: str, target: str, overwrite: bool) -> None:
    """Publish ``tmp`` as ``target``: atomically replacing a regular file with ``overwrite``,
    never replacing anything without it (hard link, then unlink the temporary)."""
    st = None
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(target)
    if st is not None and stat.S_IFMT(st.st_mode) in _KINDS:
        raise RestoreTargetNotRegular(target, _KINDS[stat.S_IFMT(st.st_mode)])
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target, follow_symlinks=False)
    except FileExistsError:
        raise RestoreTargetExists(target) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(target):  # no hard links here (FAT, some shares): check, rename
            raise RestoreTargetExists(target) from None
        os.rename(tmp, target)
        return
    os.unlink(tmp)


#: Frames whose recipes are read together (one ``get`` for most windows).
RECIPE_WINDOW = 1024


def _stored(
    repo: Repository,
    table: ChunkTable,
    frames: _FrameCheck | None,
    progress: Callable[[int], None] | None,
) -> Iterator[tuple[int, bytes]]:
    """``(tag, blob id)`` of every stored blob to fetch, in disk order: a frame stored whole
    is tagged ``2 × offset``; a frame stored as a recipe (repository version 2) is replaced by
    its non-zero pieces, each tagged ``2 × offset + 1``, and announced to ``frames`` for its
    hash check (``None`` in a version-5 repository: :func:`read_recipes` checked each recipe
    against the frame's id, and each piece is authenticated as it is fetched).  Recipes are
    read :data:`RECIPE_WINDOW` frames at a time."""

    def expand(window: list[int]) -> Iterator[tuple[int, bytes]]:
        ids = [table.blob_id(i) for i in window]
        recipe_ids = []
        for blob_id in ids:
            loc = repo.locate(blob_id)
            if loc is not None and loc.codec == CODEC_RECIPE:
                recipe_ids.append(blob_id)
        recipes = read_recipes(repo, recipe_ids) if recipe_ids else {}
        for i, blob_id in zip(window, ids, strict=True):
            offset = table.offsets[i]
            pieces = recipes.get(blob_id)
            if pieces is None:
                yield 2 * offset, blob_id
                continue
            if frames is not None:
                frames.expect(offset, table.lengths[i], blob_id)
            for piece_id, length in pieces:
                if piece_id != ZERO_ID:
                    yield 2 * offset + 1, piece_id
                elif progress:
                    progress(length)
                offset += length

    window: list[int] = []
    for i in range(len(table)):
        if table.blob_id(i) != ZERO_ID:
            window.append(i)
            if len(window) >= RECIPE_WINDOW:
                yield from expand(window)
                window = []
        elif progress:
            progress(table.lengths[i])
    yield from expand(window)


class _FrameCheck:
    """Checks each frame restored from a recipe against its id (keyed BLAKE3 of the frame),
    hashing its pieces as they are written — in offset order, all-zero pieces as zeros — so a
    recipe listing the wrong (each authentic) pieces fails the restore (``DataCorrupt``)."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.pending: deque[tuple[int, int, bytes]] = deque()  # (start, length, id)
        self.current: tuple[int, int, bytes] | None = None
        self.hasher = blake3(key=key)
        self.pos = 0

    def expect(self, start: int, length: int, blob_id: bytes) -> None:
        self.pending.append((start, length, blob_id))

    def piece(self, offset: int, data: bytes | memoryview) -> None:
        while self.current is None or offset >= self.current[0] + self.current[1]:
            self._finish()
            if not self.pending:
                raise DataCorrupt("restore", f"unexpected piece at offset {offset}")
            self.current = self.pending.popleft()
            self.hasher = blake3(key=self.key)
            self.pos = self.current[0]
        if offset < self.pos:
            raise DataCorrupt("restore", f"piece out of order at offset {offset}")
        self._zeros(offset - self.pos)
        self.hasher.update(data)
        self.pos = offset + len(data)

    def _zeros(self, n: int) -> None:
        while n > 0:
            step = min(n, len(_ZEROS))
            self.hasher.update(memoryview(_ZEROS)[:step])
            n -= step

    def _finish(self) -> None:
        if self.current is None:
            return
        start, length, blob_id = self.current
        self._zeros(start + length - self.pos)
        self.current = None
        if self.hasher.digest() != blob_id:
            raise DataCorrupt("restore", f"frame at offset {start} fails its hash check")

    def close(self) -> None:
        """Check the last frame; every announced frame must have been checked."""
        self._finish()
        if self.pending:
            raise DataCorrupt("restore", f"frame at offset {self.pending[0][0]} never arrived")


@dataclass(frozen=True)
class DiskTarget:
    """Where a restored disk goes: ``file`` (a raw image at ``path``, an existing one replaced
    only with ``overwrite``: :func:`restore_disk`), ``device`` (the block device ``path``,
    written in place: :func:`restore_disk_to_device`) or ``stream`` (the open descriptor
    ``fd``, named ``path`` in messages: :func:`restore_disk_to_stream`)."""

    kind: Literal["file", "device", "stream"]
    path: str
    overwrite: bool = False
    fd: int = STDOUT_FD

    #: the target argument that names standard output
    STDOUT = stream_out.STDOUT

    @classmethod
    def parse(cls, target: str, *, device: bool = False, overwrite: bool = False) -> DiskTarget:
        """The target of ``restore image --to TARGET [--device] [--overwrite]``."""
        if target == cls.STDOUT:
            return cls("stream", STDOUT_NAME, fd=STDOUT_FD)
        return cls("device" if device else "file", target, overwrite)

    def check(self) -> None:
        """Refuse a file or device that must not be written, before anything is fetched (typed
        errors, exit code 15); a stream has nothing to check."""
        if self.kind == "device":
            check_device(self.path)
        elif self.kind == "file":
            check_target(self.path, self.overwrite)


def restore_disk_to(
    repo: Repository,
    point: RestorePoint,
    disk: int,
    target: DiskTarget,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write disk ``disk`` of ``point`` to ``target`` (see :class:`DiskTarget`); bytes restored."""
    if target.kind == "stream":
        return restore_disk_to_stream(
            repo, point, disk, target.fd, name=target.path, workers=workers, progress=progress
        )
    if target.kind == "device":
        return restore_disk_to_device(
            repo, point, disk, target.path, workers=workers, progress=progress
        )
    return restore_disk(
        repo, point, disk, target.path, workers=workers, progress=progress,
        overwrite=target.overwrite,
    )


def restore_disk(
    repo: Repository,
    point: RestorePoint,
    disk: int,
    target: str,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> int:
    """Write disk ``disk`` of ``point`` to the file ``target``; returns bytes restored.  Raises
    a :class:`~vmkeep.storage.errors.RestoreTargetError` for a target it must not write."""
    check_target(target, overwrite)
    remove_stale_beside(target)
    keep_freed_buffers()
    table = point.chunks[disk]
    tmp, fd = _create_temp(target)
    try:
        try:
            _size_output(fd, table.size, target, disk)
            _write_disk(repo, table, _FileSink(fd), workers, progress)
            os.ftruncate(fd, table.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        _replace(tmp, target, overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return table.size


def restore_disk_to_device(
    repo: Repository,
    point: RestorePoint,
    disk: int,
    device: str,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write disk ``disk`` of ``point`` into the block device ``device`` (a path or a symlink to
    one: ``/dev/sdb``, ``/dev/disk/by-id/…``, ``/dev/VG/LV``), in place; returns bytes
    restored.

    Checked before anything is fetched (typed errors, exit code 15): ``device`` is a block
    device (:class:`RestoreTargetNotDevice`), nobody else holds it — it is opened with
    ``O_EXCL``, which the kernel refuses while it is mounted, part of a device-mapper or md
    device, or opened exclusively by another program (:class:`RestoreDeviceBusy`) — and it is
    at least the disk's size (:class:`RestoreTooLarge`; bytes past the disk's end are left as
    they are).  Every byte of the disk is written, with ``O_DIRECT`` where the device takes it:
    the disk's all-zero frames and pieces are zeroed on the device too (:class:`_DeviceSink`),
    since a device, unlike a fresh file, holds old data there.  Not atomic: a restore that
    fails after the first write leaves the device partly written and says so
    (:class:`RestoreDeviceIncomplete`, exit code 15, whatever the cause: the repository's
    damage or the device's I/O error is in its message); run it again.
    Durable when this returns (``fsync``)."""
    path = check_device(device)
    keep_freed_buffers()
    table = point.chunks[disk]
    fd = open_device(path, device, table.size, disk)
    try:
        _write_disk(repo, table, _DeviceSink(fd, table.size), workers, progress)
        os.fsync(fd)
    except RestoreTargetError:
        raise
    except StorageError as exc:  # the device was written into: say so, whatever went wrong
        raise RestoreDeviceIncomplete(device, exc.get_message()) from exc
    except OSError as exc:
        raise RestoreDeviceIncomplete(device, exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)
    return table.size


def restore_disk_to_stream(
    repo: Repository,
    point: RestorePoint,
    disk: int,
    fd: int,
    *,
    name: str = STDOUT_NAME,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write disk ``disk`` of ``point`` to the stream ``fd`` (a pipe, a socket, standard output),
    every byte in order, zeros included; returns bytes written.  Nothing is checked or kept
    beforehand: a restore that fails stops the stream short (the error says where; the reader
    sees fewer bytes than the disk's size).  ``RestoreStreamClosed`` when the reader goes away."""
    keep_freed_buffers()
    table = point.chunks[disk]
    _write_disk(repo, table, _StreamSink(fd, table.size, name), workers, progress)
    return table.size


def check_device(device: str) -> str:
    """The block device ``device`` names (symlinks followed), or :class:`RestoreTargetNotDevice`."""
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise RestoreTargetNotDevice(device, "it does not exist") from None
    except OSError as exc:
        raise RestoreTargetError(device, exc.strerror or str(exc)) from None
    if not stat.S_ISBLK(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "regular file")
        raise RestoreTargetNotDevice(device, f"it is a {kind}, not a block device")
    return os.path.realpath(device)


def open_device(path: str, device: str, size: int, disk: int) -> int:
    """Open the block device ``path`` for writing, exclusively (``O_EXCL``: refused while it is
    mounted or held) and with ``O_DIRECT`` when it allows, and check that it holds at least
    ``size`` bytes."""
    flags = os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags | getattr(os, "O_DIRECT", 0))
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # a device without direct I/O: the page cache, then
                raise
            fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise RestoreDeviceBusy(device, exc.strerror or str(exc)) from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RestoreTargetNotWritable(device, exc.strerror or device) from None
        raise RestoreTargetError(device, exc.strerror or str(exc)) from None
    try:
        capacity = os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        os.close(fd)
        raise RestoreTargetError(device, exc.strerror or str(exc)) from None
    if capacity < size:
        os.close(fd)
        raise RestoreTooLarge(device, disk, size, f"the device holds only {capacity} bytes")
    return fd


#: ``BLKZEROOUT`` (``<linux/fs.h>``: ``_IO(0x12, 127)``): zero a byte range of a block device;
#: the kernel uses the device's write-zeroes command or writes zero pages itself.
BLKZEROOUT = 0x127F
#: ``BLKSSZGET`` (``_IO(0x12, 104)``): the device's logical block size (direct I/O's alignment).
BLKSSZGET = 0x1268
#: Bytes of the disk staged and written to a device at a time (one ``O_DIRECT`` write).
DEVICE_BLOCK = 8 * 1024 * 1024


class _FileSink:
    """Writes into a fresh image file: ``pwrite`` at each offset, write-back started by a
    :class:`_Flusher`; all-zero ranges are never written (the file keeps them as holes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.flusher = _Flusher(fd)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        _pwrite_all(self.fd, data, offset)
        self.flusher.wrote(len(data), offset + len(data))

    def close(self) -> None:
        self.flusher.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.flusher.close()


class _DeviceSink:
    """Writes a disk into a block device, every byte of it, block by block.

    The restore's writes come in ascending offset order, and every byte of the disk no write
    covers is zero (all-zero frames and pieces are never fetched).  So each
    :data:`DEVICE_BLOCK` of the disk is staged in a zeroed, page-aligned buffer, the writes that
    fall into it copied in, and the block written with one ``pwrite`` (``O_DIRECT`` when the
    device was opened so: no page cache, large requests) once a write past it arrives, or at
    :meth:`close`.  Runs of blocks no write touched are zeroed with ``BLKZEROOUT`` instead (the
    device's write-zeroes command where it has one; ``pwrite`` of zeros when the ioctl is
    refused).  The disk's end: when its size is not a multiple of the device's logical block
    size, the last bytes are written without ``O_DIRECT``.  Single-threaded (the restore's
    writer); :meth:`close` writes what is staged."""

    def __init__(self, fd: int, size: int) -> None:
        import fcntl
        import mmap
        import struct

        self.fd, self.size = fd, size
        try:
            raw = fcntl.ioctl(fd, BLKSSZGET, bytes(4))
            self.sector = max(512, struct.unpack("=i", raw)[0])
        except OSError:
            self.sector = 4096  # not a block device (tests): any alignment works
        self.buf = mmap.mmap(-1, DEVICE_BLOCK)  # page-aligned, zero
        self.view = memoryview(self.buf)
        self.start = 0  # the block being staged: [start, start + DEVICE_BLOCK)
        self.dirty = False
        self.end = 0  # writes may not go backwards
        self.zero_from: int | None = None  # start of a run of untouched blocks
        self.ioctl = True

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if offset < self.end:
            raise ValueError(f"device writes must ascend: {offset} after {self.end}")
        self.end = offset + view.nbytes
        while view.nbytes:
            while offset >= self.start + DEVICE_BLOCK:
                self._finish_block()
            at = offset - self.start
            step = min(view.nbytes, DEVICE_BLOCK - at)
            self.view[at : at + step] = view[:step]
            self.dirty = True
            view, offset = view[step:], offset + step

    def close(self) -> None:
        try:
            while self.start < self.size:
                self._finish_block()
            self._zero_run(self.size)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop what is staged (after an error: the device is left as it is)."""
        if not self.buf.closed:
            self.view.release()
            self.buf.close()

    def _finish_block(self) -> None:
        length = min(DEVICE_BLOCK, self.size - self.start)
        if self.dirty:
            self._write(self.start, self.view[:length])
            self.view[:length] = memoryview(_ZEROS)[:length]
            self._zero_run(self.start)  # the untouched blocks before this one
        elif self.zero_from is None:
            self.zero_from = self.start
        self.start += DEVICE_BLOCK
        self.dirty = False

    def _zero_run(self, end: int) -> None:
        if self.zero_from is None:
            return
        start, self.zero_from = self.zero_from, None
        end = min(end, self.size)
        aligned = end - end % self.sector
        if aligned > start and not self._zero_out(start, aligned):
            for at in range(start, aligned, DEVICE_BLOCK):  # the staged buffer is zero now
                self._write(at, self.view[: min(DEVICE_BLOCK, aligned - at)])
        if aligned < end:
            self._write(aligned, self.view[: end - aligned])

    def _zero_out(self, start: int, end: int) -> bool:
        if not self.ioctl:
            return False
        import fcntl
        import struct

        try:
            fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("=QQ", start, end - start))
        except OSError as exc:
            if exc.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTSUP):
                raise
            self.ioctl = False
            return False
        return True

    def _write(self, offset: int, data: memoryview) -> None:
        whole = data.nbytes - data.nbytes % self.sector
        if whole:
            _pwrite_all(self.fd, data[:whole], offset)
        if whole < data.nbytes:  # the disk's last bytes, not a whole sector: no direct I/O
            import fcntl

            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~getattr(os, "O_DIRECT", 0))
            _pwrite_all(self.fd, data[whole:], offset + whole)


#: zeros to hash (frame checks) and to write (devices, streams): one shared buffer, sliced by view
_ZEROS = bytes(DEVICE_BLOCK)


class _StreamSink:
    """Writes a disk to a stream in order: the zeros between the restore's (ascending) writes
    are written too, from a shared zero buffer."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        self.out, self.size = StreamWriter(fd, name), size

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset < self.out.pos:
            raise ValueError(f"stream writes must ascend: {offset} after {self.out.pos}")
        self._zeros(offset)
        self.out.write(data)

    def close(self) -> None:
        self._zeros(self.size)

    def abort(self) -> None:
        pass

    def _zeros(self, end: int) -> None:
        while self.out.pos < end:
            self.out.write(memoryview(_ZEROS)[: min(end - self.out.pos, DEVICE_BLOCK)])


class _Sink(Protocol):
    """Where :func:`_write_disk` puts a disk's bytes: ``write`` in ascending offsets, then
    ``close`` (everything written; errors raised), or ``abort`` after an error."""

    def write(self, offset: int, data: bytes | memoryview) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def _write_disk(
    repo: Repository,
    table: ChunkTable,
    sink: _Sink,
    workers: int | None,
    progress: Callable[[int], None] | None,
) -> None:
    """Fetch, decode and authenticate every stored chunk of ``table`` and hand it to ``sink`` at
    its offset, in ascending order (see the module docstring); all-zero chunks and pieces are
    not handed over.  ``sink.close()`` once all are; ``sink.abort()`` after an error (the
    caller gives up the target then)."""
    workers = workers or max(2, os.cpu_count() or 2)
    inflight: deque[Future[list[tuple[int, bytes | memoryview]]]] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vmkeep-restore")

    # versions 2-4 name a recipe frame by its bytes: hash each frame as it is written
    frames = None if repo.config.recipe_ids else _FrameCheck(repo.hasher.key)

    def drain_one() -> None:
        for tag, data in inflight.popleft().result():
            offset, is_piece = divmod(tag, 2)
            sink.write(offset, data)
            if is_piece and frames is not None:
                frames.piece(offset, data)
            if progress:
                progress(len(data))

    try:
        for span in plan_spans(repo, _stored(repo, table, frames, progress)):
            inflight.append(pool.submit(fetch_span, repo, span))
            if len(inflight) >= SPANS_PER_WORKER * workers:
                drain_one()
        while inflight:
            drain_one()
        if frames is not None:
            frames.close()
        sink.close()
    except BaseException:
        for future in inflight:
            future.cancel()
        sink.abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
