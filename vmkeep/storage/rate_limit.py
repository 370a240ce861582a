"""Bandwidth limits for repository transfers: one token bucket per direction and process.

``VMKEEP_LIMIT_UPLOAD`` / ``VMKEEP_LIMIT_DOWNLOAD`` (KiB/s, restic's ``--limit-upload`` /
``--limit-download``; the CLI's global ``--limit-upload`` / ``--limit-download`` set them) cap
the bytes a process sends to and reads from every repository target it opens — local paths
(an NFS mount is one), SFTP, SMB and object stores alike.  All threads and all repositories of a
process share one bucket per direction, so 4 upload threads at ``--limit-upload 10240`` send
10 MiB/s together, and ``copy`` reads its source under the download limit and writes its
destination under the upload limit.

``VMKEEP_LIMIT_READ`` (KiB/s; ``--limit-read``) caps the other side: what a process reads of the
disks it backs up (VM disks over any transport, staging copies, ``backup image`` sources), to
spare production datastores; :func:`source_reads` is its bucket, shared by the process's disks.

The bucket (:class:`RateLimiter`) is a virtual-time scheduler (GCRA): each ``take(n)`` books
``n / rate`` seconds after the previous booking and sleeps until its booking, less the burst,
is due.  A caller never waits for another's sleep (bookings happen under a lock, sleeping
outside it).  Transfers are paced in slices of :data:`SLICE` bytes (see
:mod:`vmkeep.storage.backends.throttled`), so the link sees at most one slice above the rate at
any moment, never a whole 32 MiB pack at line speed followed by a pause.

Contract: over any interval, the bytes booked are at most ``rate · interval + burst``; the limit
is never exceeded by retries (a retried transfer books its bytes again).  Time comes from an
injectable clock and sleep, so the unit tests need no wall clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

#: Bytes per booking: uploads are written and downloads read in slices of this size.
SLICE = 256 * 1024
KIB = 1024


class RateLimiter:
    """A token bucket of ``rate`` bytes per second holding at most ``burst`` bytes."""

    def __init__(
        self,
        rate: float,
        burst: int = SLICE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = float(rate)
        self.burst = burst
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._due = clock()  # virtual time at which every booked byte has been "sent"
        #: bytes booked so far with this bucket (for measurements and tests)
        self.booked = 0

    def take(self, n: int) -> None:
        """Book ``n`` bytes; return once sending them keeps to the rate (sleeps if needed)."""
        if n <= 0:
            return
        with self._lock:
            now = self._clock()
            self.booked += n
            self._due = max(self._due, now) + n / self.rate
            wait = self._due - now - self.burst / self.rate
        if wait > 0:
            self._sleep(wait)


def paced_slices(
    parts: Sequence[bytes | memoryview], pace: Callable[[int], None]
) -> Iterator[memoryview]:
    """The bytes of ``parts`` in order, as views of at most :data:`SLICE` bytes (no copies),
    each booked with ``pace`` before it is handed out: what a backend sends slice by slice."""
    for part in parts:
        view = memoryview(part).cast("B")
        for start in range(0, view.nbytes, SLICE):
            piece = view[start : start + SLICE]
            pace(piece.nbytes)
            yield piece


@dataclass(frozen=True)
class Limits:
    """The process's limiters; ``None`` for a direction without a limit."""

    upload: RateLimiter | None = None
    download: RateLimiter | None = None

    def __bool__(self) -> bool:
        return self.upload is not None or self.download is not None


_buckets: dict[tuple[str, int], RateLimiter] = {}
_limits: dict[tuple[int | None, int | None], Limits] = {}
_lock = threading.Lock()


def _bucket(direction: str, kib: int | None) -> RateLimiter | None:
    """The process's bucket of ``direction`` at ``kib`` KiB/s (None: no limit); the same
    direction and rate give the same bucket for the life of the process."""
    if not kib:
        return None
    with _lock:
        found = _buckets.get((direction, kib))
        if found is None:
            found = _buckets[(direction, kib)] = RateLimiter(kib * KIB)
    return found


def current() -> Limits:
    """The limiters of the current settings (``VMKEEP_LIMIT_UPLOAD`` / ``_DOWNLOAD``, KiB/s).

    The same values give the same limiters for the life of the process: every backend opened
    under them shares one bucket per direction."""
    from vmkeep.settings import settings

    conf = settings()
    key = (conf.limit_upload, conf.limit_download)
    found = _limits.get(key)
    if found is None:  # a race builds equal Limits around the same buckets: harmless
        found = _limits.setdefault(
            key, Limits(upload=_bucket("upload", key[0]), download=_bucket("download", key[1])))
    return found


def source_reads() -> RateLimiter | None:
    """The bucket of ``VMKEEP_LIMIT_READ`` (KiB/s), or ``None`` without a limit; the same value
    gives the same bucket for the life of the process (shared by every disk it backs up)."""
    from vmkeep.settings import settings

    return _bucket("read", settings().limit_read)
