"""Reading repository objects ahead of the tape writer, into a bounded pool of buffers.

:class:`Prefetch` yields ``(key, data, digest, release)`` for each key in order, reading and
hashing (:func:`~vmkeep.tape.pax.object_digest`; BLAKE3 and XXH3 release the GIL) on one
reader thread up to ``ahead`` objects in advance, so the ring buffer of
:class:`~vmkeep.tape.stream.BlockWriter` keeps filling while the next pack is read.  The
whole object is read before it is yielded: its digest goes in its pax header, which precedes
its bytes.  Objects read into pool buffers are hashed read by read
(:class:`~vmkeep.tape.pax.ObjectDigest`), each part right after it arrived, while it is still
in the CPU's caches: one pass over memory fewer on the two cores the drive (tgtd) shares.

How objects are read:

* **local repository, objects of at least** :data:`MIN_DIRECT` (packs): with ``O_DIRECT`` in
  reads of :data:`CHUNK` (each hashed at once) into one of :data:`BUFFERS` page-aligned
  anonymous buffers, reused.
  A nightly copy reads packs that were written with ``O_DIRECT`` (never in the page cache):
  read through the page cache (``mmap`` + ``MAP_POPULATE``, the previous way) each cold pack
  cost the kernel page-cache insertion and later eviction, on the same two cores tgtd and the
  drive's writer thread need, and mapping/unmapping 32 MiB per pack takes the process's
  memory-map lock the writer's allocations also need (docs/performance.md, "Tape").  ``data``
  is a read-only view of the buffer; ``release`` must be called once no view of it is in use
  any more — the copy job queues it behind the object's blocks in the ring
  (:meth:`BlockWriter.fence`), so the writer thread frees the buffer after sending its last
  block.  Objects are immutable and the copy job holds the repository's shared lock, so the
  bytes read are the object's.  A file system that refuses ``O_DIRECT`` is read buffered into
  the same buffers.
* **packs whose every page is already in the page cache** (a copy right after a backup that
  wrote buffered, a restore or check that just read them, a second copy of the same points):
  mapped (``mmap`` + ``MAP_POPULATE``), not read — ``O_DIRECT`` would read them from the disk
  again.  Whether a file is cached is asked with ``cachestat(2)`` (Linux ≥ 6.5), which does no
  I/O; a ``preadv2(RWF_NOWAIT)`` probe cannot be used, because on a miss it still starts
  readahead into the cache, the cost ``O_DIRECT`` avoids.  A file only partly cached, or a
  kernel without ``cachestat``, is read with ``O_DIRECT`` as above.  ``data`` is then a
  read-only view of the mapping; ``release`` (:class:`_Unmap`, fenced behind the object's last
  block like a buffer's) hands the mapping to the ``tape-unmap`` thread, so that the munmap —
  milliseconds for a pack — does not run on the drive's writer thread, where the last view
  goes.  Measured in docs/performance.md ("Tape, run J" and "run N").
* **smaller objects** (config, keys, indexes, manifests) and **other backends**: ``get`` (a
  ``bytes`` copy; ``release`` is None).

Memory: at most :data:`BUFFERS` buffers, each the size of the largest object read so far
(rounded up to 1 MiB): 4 × 32 MiB = 128 MiB with the default pack size.  They are kept for the
process's next copy job (:func:`release_buffers` frees them).  An object larger than
:data:`MAX_DIRECT` is mapped instead (``mmap``, shared with the page cache).

The buffers are **private** anonymous memory, **pre-faulted** when made (on the reader thread):
a fresh page costs a fault and zeroing — on the benchmark VM, whose freed memory goes back to the
hypervisor, about 0.4 s per GB pre-faulted private against 0.9 touched shared, which is what
``mmap.mmap(-1, n)`` gives (shmem) — and that CPU is taken from the drive's writer thread and
tgtd while the drive streams (docs/performance.md, "Tape, run L").  Pre-faulting (and populating
a mapped cached pack) is ``madvise(MADV_POPULATE_WRITE / _READ)`` called through ctypes, which
releases the GIL: ``mmap.mmap(…, MAP_POPULATE)`` faults every page in while holding the GIL
(measured: 204 ms for 512 MiB, during which no other thread runs Python), and the drive's
writer thread needs the GIL between blocks.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from queue import SimpleQueue

from vmkeep.storage.backend import Backend
from vmkeep.storage.backends import direct_io
from vmkeep.storage.backends.local import LocalBackend
from vmkeep.tape.pax import ObjectDigest, object_digest

#: Objects at least this large are read into the buffer pool (packs); smaller ones with get().
MIN_DIRECT = 1 << 20
#: Objects larger than this are mapped, not buffered (bounds the pool's memory).
MAX_DIRECT = 256 << 20
#: Size of each ``O_DIRECT`` read.  Each read is hashed right after it, while its bytes are in
#: the CPU's caches (2 MiB: the L2 of both cores here; a 32 MiB pack hashed after all of it was
#: read came from memory again): the copy streamed at a median 0.909 of the raw writer against
#: 0.875 hashing whole packs (36 interleaved runs each, docs/performance.md, "Tape, run O").
CHUNK = 2 << 20
#: Buffers in the pool: ``ahead`` objects read + one being read + the one(s) in the ring.
BUFFERS = 4
#: Objects read in advance of the one being written.
AHEAD = 2
#: Nice value added to the reader thread (Linux: per thread): see the module docstring.
READER_NICE = 10
#: Map (rather than read with ``O_DIRECT``) the objects whose every page is in the page cache.
MAP_CACHED = True
#: x86-64 and arm64 (generic table) number of ``cachestat(2)``.
_SYS_CACHESTAT = {"x86_64": 451, "aarch64": 451}.get(os.uname().machine)
_PAGE = mmap.PAGESIZE

Item = tuple[str, bytes | memoryview, str, Callable[[], None] | None]


class _Closed(Exception):
    """The pool was closed while a reader waited for a buffer."""


#: Buffers of finished jobs, kept for the next (a fresh buffer costs a page fault and zeroing
#: per page: 0.36 CPU-seconds per GB on the benchmark machine).
_idle: list[mmap.mmap] = []
_idle_lock = threading.Lock()


def release_buffers() -> None:
    """Free the buffers kept for the next job."""
    with _idle_lock:
        _idle.clear()


class BufferPool:
    """At most ``count`` page-aligned anonymous buffers, handed out and given back; taken from
    and left to the process's idle buffers (at most :data:`BUFFERS` kept)."""

    def __init__(self, count: int = BUFFERS) -> None:
        self._free: list[mmap.mmap] = []
        self._made = 0
        self._count = count
        self._cv = threading.Condition()
        self._closed = False

    def prepare(self, size: int) -> None:
        """Make the pool's buffers not made yet, each of at least ``size`` bytes, pre-faulted,
        one at a time (on the calling thread, beside the reader: :class:`Prefetch` runs it
        while the first object is read and the cartridge loaded, so that the drive never
        waits for a buffer's pages).  Stops when the pool is closed."""
        want = _round_up(size)
        while True:
            with self._cv:
                if self._made >= self._count or self._closed:
                    return
                self._made += 1
            with _idle_lock:
                kept = _idle.pop() if _idle else None
            buf = kept if kept is not None and len(kept) >= want else _new_buffer(want)
            with self._cv:
                if not self._closed:
                    self._free.append(buf)
                    self._cv.notify()
                    continue
            _keep(buf)
            return

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes (waits for one to be given back)."""
        want = _round_up(size)
        with self._cv:
            while not self._free and self._made >= self._count and not self._closed:
                self._cv.wait()
            if self._closed:
                raise _Closed
            if self._free:
                buf = self._free.pop()
                if len(buf) >= want:
                    return buf
            else:
                self._made += 1
                with _idle_lock:
                    kept = _idle.pop() if _idle else None
                if kept is not None and len(kept) >= want:
                    return kept
        return _new_buffer(want)  # a buffer too small for this object is dropped

    def give(self, buf: mmap.mmap) -> None:
        with self._cv:
            if not self._closed:
                self._free.append(buf)
                self._cv.notify()
                return
        _keep(buf)  # given back after the job: no view of it is in the ring any more

    def close(self) -> None:
        with self._cv:
            self._closed = True
            free, self._free = self._free, []
            self._cv.notify_all()
        for buf in free:
            _keep(buf)


def _round_up(size: int) -> int:
    return max(1, -(-size // (1 << 20))) * (1 << 20)


def _new_buffer(size: int) -> mmap.mmap:
    """``size`` bytes of private anonymous memory, page-aligned, every page faulted in now
    where the kernel can (:func:`_populate`; else the first read into it faults them)."""
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    _populate(buf, write=True)
    return buf


#: ``madvise`` advice values (Linux ≥ 5.14): fault pages in, readable / writable.
_MADV_POPULATE_READ, _MADV_POPULATE_WRITE = 22, 23
_populate_works = sys.platform.startswith("linux")


def _populate(m: mmap.mmap, write: bool) -> None:
    """Fault every page of the writable mapping ``m`` in, with the GIL released (``madvise``
    through ctypes): for writing (anonymous buffers) or for reading (a private mapping of a
    cached file: its page-cache pages are mapped, nothing is copied).  Does nothing where the
    kernel has no such advice (pages are then faulted on first use)."""
    global _populate_works
    if not _populate_works or not len(m):
        return
    anchor = ctypes.c_char.from_buffer(m)  # the mapping's address; released below
    try:
        advice = _MADV_POPULATE_WRITE if write else _MADV_POPULATE_READ
        rc = _c_library().madvise(ctypes.c_void_p(ctypes.addressof(anchor)),
                                  ctypes.c_size_t(len(m)), ctypes.c_int(advice))
        if rc != 0 and ctypes.get_errno() == errno.EINVAL:  # kernel older than 5.14
            _populate_works = False
    finally:
        del anchor


def _keep(buf: mmap.mmap) -> None:
    with _idle_lock:
        if len(_idle) < BUFFERS:
            _idle.append(buf)


class _Reader:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.local = isinstance(backend, LocalBackend)
        self.direct = isinstance(backend, LocalBackend) and direct_io.supported(backend.root)
        self.pool = BufferPool()
        self.niced = False

    def prepare(self, keys: list[str]) -> None:
        """Make the buffer pool for the largest of the first :data:`BUFFERS` objects that
        will be read into it (none: nothing to do)."""
        if not self.local:
            return
        sizes = []
        for key in keys[:BUFFERS]:
            found = self._stat(key)
            if found is not None and self._how(*found) == "pool":
                sizes.append(found[1])
        if sizes:
            self.pool.prepare(max(sizes))

    def _stat(self, key: str) -> tuple[str, int] | None:
        """(path, size) of a local object; None when it cannot be stat-ed (``get`` then
        reports it with its typed error)."""
        assert isinstance(self.backend, LocalBackend)
        path = os.path.join(self.backend.root, *key.split("/"))
        try:
            return path, os.stat(path).st_size
        except OSError:
            return None

    def _how(self, path: str, size: int) -> str:
        """How a local object is read: ``"get"`` (small), ``"map"`` (too large for a buffer,
        or every page already cached) or ``"pool"`` (``O_DIRECT`` into a pool buffer)."""
        if size < MIN_DIRECT:
            return "get"
        if size > MAX_DIRECT or (self.direct and MAP_CACHED and _all_cached(path, size)):
            return "map"
        return "pool"

    def load(self, key: str) -> tuple[bytes | memoryview, str, Callable[[], None] | None]:
        if not self.niced:
            self.niced = True
            _lower_priority(READER_NICE)
        data: bytes | memoryview | None = None
        release: Callable[[], None] | None = None
        digest: str | None = None  # hashed while read (pool buffers)
        if self.local:
            got = self._read_local(key)
            if got is not None:
                data, release, digest = got
        if data is None:
            data = self.backend.get(key)
        try:
            return data, digest if digest is not None else object_digest(key, data), release
        except BaseException:
            if release is not None:
                release()
            raise

    def _read_local(
        self, key: str
    ) -> tuple[memoryview, Callable[[], None] | None, str | None] | None:
        found = self._stat(key)
        if found is None:
            return None
        path, size = found
        how = self._how(path, size)
        if how == "get":
            return None
        if how == "map":
            mapped = _map(path, populate=size <= MAX_DIRECT)
            if mapped is None:
                return None
            view, m = mapped
            return view, _unmapper.release_for(m), None
        buf = self.pool.take(size)
        try:
            view = memoryview(buf)
            digest = self._read_into(path, view, size, key)
            if digest is None:
                self.pool.give(buf)
                return None
        except BaseException:
            self.pool.give(buf)
            raise
        return view[:size].toreadonly(), lambda: self.pool.give(buf), digest

    def _read_into(self, path: str, view: memoryview, size: int, key: str) -> str | None:
        """Read the file's ``size`` bytes into ``view``, hashing each read right after it,
        while its bytes are still in the CPU's caches; the object's digest
        (:class:`~vmkeep.tape.pax.ObjectDigest`), or None when the file is not that size."""
        fd = self._open(path)
        if fd is None:
            return None
        try:
            end = -(-size // direct_io.ALIGN) * direct_io.ALIGN  # O_DIRECT lengths are aligned
            off = 0
            digest: ObjectDigest | None = None
            while off < end:
                n = os.preadv(fd, [view[off : min(off + CHUNK, end)]], off)
                if n <= 0:
                    break
                if digest is None:
                    if n < min(size, ObjectDigest.HEAD):
                        return None  # a short first read: get() reads it instead
                    digest = ObjectDigest(key, view[:n])
                digest.update(view[off : min(off + n, size)])
                off += n
            if off != size or digest is None:
                return None
            return digest.result()
        finally:
            os.close(fd)

    def _open(self, path: str) -> int | None:
        if self.direct:
            try:
                return os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    return None
                self.direct = False  # refused after all: buffered from now on
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None


class Prefetch:
    """``(key, data, digest, release)`` of ``keys`` in order (an iterator); see the module
    docstring.  Reading starts at construction — the copy job creates it before loading and
    labelling the cartridge, so the first pack is ready when the drive is.  ``next_key`` is the
    key the next item will be (None at the end).  The caller calls ``release`` (when not None)
    once nothing uses ``data`` any more; buffers of objects read ahead but never consumed are
    dropped with the pool at :meth:`close`."""

    def __init__(self, backend: Backend, keys: list[str], ahead: int = AHEAD) -> None:
        self._reader = _Reader(backend)
        self._keys = iter(keys)
        self._ahead = ahead
        self._ex = ThreadPoolExecutor(1, thread_name_prefix="tape-read")
        self._futures: deque[tuple[str, Future[tuple[bytes | memoryview, str,
                                                     Callable[[], None] | None]]]] = deque()
        self._fill()
        self._preparer = threading.Thread(target=self._reader.prepare, args=(keys,),
                                          name="tape-buffers", daemon=True)
        self._preparer.start()

    def _fill(self) -> None:
        while len(self._futures) <= self._ahead:
            key = next(self._keys, None)
            if key is None:
                return
            self._futures.append((key, self._ex.submit(self._reader.load, key)))

    @property
    def next_key(self) -> str | None:
        return self._futures[0][0] if self._futures else None

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Item:
        if not self._futures:
            raise StopIteration
        key, f = self._futures.popleft()
        self._fill()
        return (key, *f.result())

    def close(self) -> None:
        for _k, f in self._futures:
            f.cancel()
        self._futures.clear()
        self._reader.pool.close()  # a load waiting for a buffer gives up
        self._ex.shutdown(wait=True)
        self._preparer.join()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch(backend: Backend, keys: list[str], ahead: int = AHEAD) -> Iterator[Item]:
    """:class:`Prefetch` as a generator (closed when the generator is)."""
    with Prefetch(backend, keys, ahead) as objs:
        yield from objs


def _lower_priority(nice: int) -> None:
    """Lower the calling thread's priority by ``nice`` (Linux: threads have their own)."""
    if not nice or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


class _CacheStatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


_libc: ctypes.CDLL | None = None


def _c_library() -> ctypes.CDLL:
    """The C library (its functions release the GIL while they run)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


_cachestat_works = _SYS_CACHESTAT is not None and sys.platform.startswith("linux")


def cached_pages(fd: int) -> int | None:
    """Pages of the open file ``fd`` in the page cache (``cachestat(2)``: no I/O), or None
    when the kernel cannot tell (older than 6.5, another platform)."""
    global _cachestat_works
    if not _cachestat_works:
        return None
    rng, st = _CacheStatRange(0, 0), _CacheStat()  # len 0: to the end of the file
    if _c_library().syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # no such call (or filtered)
            _cachestat_works = False
        return None
    return int(st.nr_cache)


def _all_cached(path: str, size: int) -> bool:
    """True when every page of the file at ``path`` (of ``size`` bytes) is in the page cache."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        pages = cached_pages(fd)
    finally:
        os.close(fd)
    return pages is not None and pages >= -(-size // _PAGE)


def _map(path: str, populate: bool = False) -> tuple[memoryview, mmap.mmap] | None:
    """A read-only view of the file, mapped (its pages are the page cache's), and the mapping;
    None if empty or unreadable.  The mapping lives as long as views of it (or it) do.
    ``populate``: fault every page in now, on the reader thread and with the GIL released
    (:func:`_populate`; the mapping is then private and writable so that ctypes can take its
    address — nothing writes to it, the view is read-only), rather than page by page in the
    writer thread."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if not size:
            return None
        if populate:
            m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            _populate(m, write=False)
        else:
            m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    except OSError:
        return None
    finally:
        os.close(fd)
    return memoryview(m).toreadonly(), m


class _Unmapper:
    """Drops mappings on a thread of its own (``tape-unmap``, niced like the reader).

    Unmapping a pack's 32 MiB of mapped page-cache pages takes 5–7 ms on the benchmark VM
    (page tables, TLB shoot-downs to the other CPU; ``bench/bench_page_faults.py``, part 3) —
    longer than two queued 1 MiB WRITEs last.  It happens where the mapping's last reference
    goes, which
    without this is the drive's writer thread, right after the pack's last block was answered:
    with two WRITEs queued the drive then ran dry at every pack boundary of a warm copy (pauses
    of 3–5 ms between WRITEs, docs/performance.md "Tape, run N").  The copy job's ``release``
    of a mapped object (a fence behind its last block) hands the mapping here instead; the
    writer's views are gone by then, so the munmap runs on this thread — unless the job's
    thread still holds its view of the object (it lets go when it takes the next object), in
    which case it runs there, off the writer thread too.  Holding a mapping a little longer is
    all it costs."""

    def __init__(self) -> None:
        self._queue: SimpleQueue[mmap.mmap] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def release_for(self, m: mmap.mmap) -> _Unmap:
        """The ``release`` of a mapped object: hands ``m`` over (once)."""
        return _Unmap(self, m)

    def drop(self, m: mmap.mmap) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tape-unmap",
                                                daemon=True)
                self._thread.start()
        self._queue.put(m)

    def _run(self) -> None:
        _lower_priority(READER_NICE)
        while True:
            m = self._queue.get()
            del m  # the last reference: munmap here (the GIL is released around it)


class _Unmap:
    """A mapped object's ``release``: hands the mapping to the unmapper once and keeps no
    reference to it after (else the munmap would happen wherever this object is freed)."""

    def __init__(self, unmapper: _Unmapper, m: mmap.mmap) -> None:
        self._unmapper = unmapper
        self._m: mmap.mmap | None = m

    def __call__(self) -> None:
        m, self._m = self._m, None
        if m is not None:
            self._unmapper.drop(m)


_unmapper = _Unmapper()
