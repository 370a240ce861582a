"""Streaming to and from a tape drive in whole blocks.

:class:`BlockWriter` is the file object tarfile writes into.  It cuts the byte stream into
blocks of exactly ``block_size`` (from READ BLOCK LIMITS) and hands them through a **bounded
ring buffer** (``queue.Queue(depth)``) to a writer thread that owns the drive while the file is
written, so compression/reading on the producer side and the drive overlap and the drive keeps
streaming (no shoe-shine) as long as the producer keeps up.  The producer blocks when the
buffer is full: memory stays at ``depth × block_size``.  It is woken again only once the
buffer has drained to half (:class:`_Ring`), not after every block: one wake-up per
``depth / 2`` blocks instead of one per block, so the producer's thread competes less with the
writer thread (and tgtd) for the CPU and the GIL while the drive streams.  With ``depth`` 0
there is no ring and no thread: whole blocks are written by the thread that calls ``write``
(the bench's raw writer does so).  Either way ``outstanding`` WRITEs (default 2) are queued at
the drive where the transport can, so the drive receives the next block while it stores the
previous one.

Accounting the caller relies on:

* ``confirmed`` — bytes the drive acknowledged (whole blocks); only data below it is on tape;
* ``early_warning`` — set once a write returned EOM early warning (the block *was* written):
  the caller finishes the object in hand, closes the file and changes cartridges;
* :meth:`BlockWriter.fence` queues a callback the writer thread calls once every block queued
  before it was written (or dropped after an error): the producer frees a buffer its blocks
  were views of (:mod:`~vmkeep.tape.prefetch`);
* a drive error (VOLUME OVERFLOW, medium error, transport error) stops the thread; the next
  ``write``/``close`` raises it.  Nothing after a failed block is written.

:meth:`BlockWriter.close` pads the last block with zeros (tar readers ignore zeros after the
end-of-archive marker), waits for the thread and writes one filemark.

:class:`BlockReader` reads one tape file (until its filemark) as a byte stream for
``tarfile.open(mode="r|")``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vmkeep.scsi.ssc import EndOfData, FilemarkReached, TapeDrive
from vmkeep.settings import settings

DEFAULT_DEPTH = 16
#: WRITE commands queued at the drive at once (where the transport can queue them); also the
#: default of ``VMKEEP_TAPE_QUEUED_WRITES`` (a test keeps the two equal)
DEFAULT_OUTSTANDING = 2
_STOP = None


@dataclass(frozen=True)
class Streaming:
    """How a :class:`BlockWriter` streams: ``depth`` blocks in its ring (0: no ring, no
    thread) and ``outstanding`` WRITEs queued at the drive."""

    depth: int = DEFAULT_DEPTH
    outstanding: int = DEFAULT_OUTSTANDING

    @classmethod
    def configured(cls, depth: int = DEFAULT_DEPTH) -> Streaming:
        """``outstanding`` from ``VMKEEP_TAPE_QUEUED_WRITES`` (whose default is
        :data:`DEFAULT_OUTSTANDING`): what a copy job streams with unless told otherwise."""
        return cls(depth, settings().tape_queued_writes)

_Item = bytes | memoryview | Callable[[], None] | None


class _Ring:
    """A bounded FIFO between one producer and one consumer thread with hysteresis: ``put``
    blocks while ``depth`` items are queued and returns once at most ``depth // 2`` are left
    (the consumer wakes it then, not after every item); ``get`` blocks while it is empty."""

    def __init__(self, depth: int) -> None:
        self._items: deque[_Item] = deque()
        self._depth = max(1, depth)
        self._low = self._depth // 2
        self._cv = threading.Condition(threading.Lock())
        self._producer_waits = False
        self._consumer_waits = False

    def put(self, item: _Item) -> None:
        with self._cv:
            if len(self._items) >= self._depth:
                self._producer_waits = True
                while len(self._items) > self._low:
                    self._cv.wait()
                self._producer_waits = False
            self._items.append(item)
            if self._consumer_waits:
                self._cv.notify()

    def get(self) -> _Item:
        with self._cv:
            while not self._items:
                self._consumer_waits = True
                self._cv.wait()
            self._consumer_waits = False
            item = self._items.popleft()
            if self._producer_waits and len(self._items) <= self._low:
                self._cv.notify()
            return item


class BlockWriter:
    """See the module docstring.  ``depth``: the ring's blocks (0: no ring and no thread —
    blocks are written by the thread that calls :meth:`write`); ``outstanding``: WRITE
    commands queued at the drive at once (more than 1 only where the transport can,
    :attr:`~vmkeep.scsi.ssc.TapeDrive.can_queue`)."""

    def __init__(self, drive: TapeDrive, block_size: int, depth: int = DEFAULT_DEPTH,
                 outstanding: int = DEFAULT_OUTSTANDING) -> None:
        self.drive = drive
        self.block_size = block_size
        self._buf = bytearray()
        self._q = _Ring(depth)
        self._outstanding = max(1, outstanding) if drive.can_queue else 1
        #: WRITEs sent and not yet answered, oldest first: (wait, length, fences to run after)
        self._inflight: deque[tuple[Callable[[], bool], int, list[Callable[[], None]]]] = deque()
        #: perf_counter when the first block went to the ring, and of the end of close: the
        #: streaming phase, first block to filemark.  Bytes still in the partial-block buffer
        #: have not reached the drive, so time spent before the first whole block (the job
        #: waiting for its first pack) is set-up, as the raw writer's time before its loop.
        self.started: float | None = None
        self.finished: float | None = None
        self.written = 0  # bytes handed to write()
        self.confirmed = 0  # bytes acknowledged by the drive
        self.early_warning = False
        self.error: BaseException | None = None
        self.drive_busy = 0.0  # seconds spent sending blocks and waiting for their answers
        self.closed = False
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name="tape-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            block = self._q.get()
            if block is _STOP:
                self._settle()
                return
            if callable(block):
                self._fence(block)
                continue
            self._send(block)

    def _send(self, block: bytes | memoryview) -> None:
        """Write one block (on the writer thread, or the caller's when inline): sent, and the
        oldest WRITE collected once ``outstanding`` are in flight; a failure is kept in
        ``error`` and nothing more is sent after it."""
        if self.error is not None:
            return  # drain: never write after a failed block
        t0 = time.perf_counter()
        try:
            if self._outstanding == 1:
                if self.drive.write_block(block):
                    self.early_warning = True
                self.confirmed += len(block)
            else:
                self._inflight.append((self.drive.submit_write(block), len(block), []))
                while len(self._inflight) >= self._outstanding:
                    self._collect()
        except BaseException as exc:
            self.error = exc
            self._settle()
        finally:
            self.drive_busy += time.perf_counter() - t0

    def _collect(self) -> None:
        """Wait for the oldest WRITE in flight; its fences run whatever its outcome."""
        wait, length, fences = self._inflight.popleft()
        try:
            if wait():
                self.early_warning = True
            self.confirmed += length
        finally:
            for fence in fences:
                fence()

    def _settle(self) -> None:
        """Collect every WRITE in flight.  After an error (or when one fails here) the rest
        are still collected — each frees its command — but not counted: ``confirmed`` stays
        the bytes before the first failure.  With two commands queued, the block sent after
        a failed one may still have reached the tape; the job abandons such a file (it is
        never catalogued, and appending checks that nothing follows the last catalogued
        file)."""
        while self._inflight:
            if self.error is None:
                try:
                    self._collect()
                except BaseException as exc:
                    self.error = exc
                continue
            wait, _length, fences = self._inflight.popleft()
            try:
                with contextlib.suppress(BaseException):  # the first error is the one told
                    wait()
            finally:
                for fence in fences:
                    fence()

    def _fence(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every block sent so far is answered (now, if none is in
        flight)."""
        if self._inflight:
            self._inflight[-1][2].append(callback)
        else:
            callback()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Queue ``data``; whole blocks of ``bytes`` or of a read-only view (a mapped object
        file) are handed to the writer thread as views (no copy), the rest goes through the
        partial-block buffer."""
        self._check()
        bs, n = self.block_size, len(data)
        mv = memoryview(data)
        pos = 0
        if self._buf:
            pos = min(bs - len(self._buf), n)
            self._buf += mv[:pos]
            if len(self._buf) == bs:
                self._put(bytes(self._buf))
                self._buf.clear()
        immutable = isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly)
        while n - pos >= bs:
            block = mv[pos : pos + bs]
            self._put(block if immutable else bytes(block))
            pos += bs
        if pos < n:
            self._buf += mv[pos:]
        self.written += n
        return n

    def _put(self, block: bytes | memoryview) -> None:
        if self.started is None:
            self.started = time.perf_counter()
        if self._thread is None:
            self._send(block)
            self._check()
        else:
            self._q.put(block)

    def fence(self, callback: Callable[[], None]) -> None:
        """Have the writer thread call ``callback`` once every block queued so far was written
        to the drive or dropped after an error (bytes still in the partial-block buffer are
        copies).  Also called when the writer is closed or aborted."""
        if self._thread is None:
            self._fence(callback)
        else:
            self._q.put(callback)

    def close(self, filemark: bool = True) -> None:
        """Pad, drain, stop the thread and write a filemark; raises the drive's error."""
        if self.closed:
            return
        self.closed = True
        if self._buf and self.error is None:
            self._buf += bytes(self.block_size - len(self._buf))
            self._put(bytes(self._buf))
            self._buf.clear()
        self._stop()
        self._check()
        if filemark and self.drive.write_filemarks(1):
            self.early_warning = True
        self.finished = time.perf_counter()

    def abort(self) -> None:
        """Stop the thread without padding or a filemark (after an error)."""
        if self.closed:
            return
        self.closed = True
        if self.error is None:
            self.error = RuntimeError("aborted")
        self._stop()

    def _stop(self) -> None:
        if self._thread is not None:
            self._q.put(_STOP)
            self._thread.join()
        else:
            self._settle()


class BlockReader:
    """A read-only byte stream over one tape file, block by block, until its filemark."""

    def __init__(self, drive: TapeDrive, block_size: int) -> None:
        self.drive = drive
        self.block_size = block_size
        self._buf = b""
        self._pos = 0
        self.at_filemark = False
        self.at_eod = False
        self.bytes_read = 0

    def _fill(self) -> bool:
        if self.at_filemark or self.at_eod:
            return False
        try:
            self._buf = self.drive.read_block(self.block_size)
        except FilemarkReached:
            self.at_filemark = True
            return False
        except EndOfData:
            self.at_eod = True
            return False
        self._pos = 0
        self.bytes_read += len(self._buf)
        return True

    def empty(self) -> bool:
        """True when the file holds no (further) block: at its filemark or end of data."""
        return self._pos >= len(self._buf) and not self._fill()

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._pos >= len(self._buf) and not self._fill():
                break
            left = len(self._buf) - self._pos
            take = left if n < 0 else min(n - len(out), left)
            out += self._buf[self._pos : self._pos + take]
            self._pos += take
        return bytes(out)

    def skip_to_filemark(self) -> None:
        """Leave the rest of the file unread: space over its filemark."""
        if not (self.at_filemark or self.at_eod):
            self.drive.space_filemarks(1)
            self.at_filemark = True
