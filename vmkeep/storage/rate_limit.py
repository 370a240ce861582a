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
from typing import Protocol

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


class Pacer(Protocol):
    """Anything that books read or sent bytes: :class:`RateLimiter`, :class:`AdaptivePacer`."""

    def take(self, n: int) -> None: ...


class _Both:
    def __init__(self, first: Pacer, second: Pacer) -> None:
        self.first, self.second = first, second

    def take(self, n: int) -> None:
        self.first.take(n)
        self.second.take(n)


def both(first: Pacer | None, second: Pacer | None) -> Pacer | None:
    """One pacer booking with both (either may be None)."""
    if first is None or second is None:
        return first or second
    return _Both(first, second)


class AdaptivePacer:
    """Reads paced only while a controller says the source is overloaded (storage latency
    control: "throttle I/O of existing tasks").

    :meth:`take` counts the bytes and, while throttled, books them with a :class:`RateLimiter`.
    :meth:`observe` is the controller's verdict, once per look at the source: ``slow`` halves the
    rate (the first time: half the rate read since the previous look), never below ``floor``
    bytes/s; calm doubles it, and once it is back above the rate read before throttling began the
    pacing ends.  Multiplicative on the way down and up, as TCP backs off: a source that stays
    slow converges to ``floor``, one that recovers gets its speed back within a few looks.
    Thread-safe; the clock and sleep are injectable, so tests need no wall clock.
    """

    def __init__(
        self,
        floor: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if floor <= 0:
            raise ValueError("a rate floor must be positive")
        self.floor = float(floor)
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._limiter: RateLimiter | None = None
        self._bytes = 0
        self._since = clock()
        self._before = 0.0  # the rate read before throttling began
        self._throttled_since: float | None = None
        #: seconds spent throttled so far, looks that found the source slow, the lowest rate
        self.throttled_s = 0.0
        self.slow_looks = 0
        self.lowest: float | None = None

    @property
    def rate(self) -> float | None:
        """Bytes/s while throttled, else None."""
        limiter = self._limiter
        return limiter.rate if limiter is not None else None

    def take(self, n: int) -> None:
        with self._lock:
            self._bytes += n
            limiter = self._limiter
        if limiter is not None:
            limiter.take(n)

    def observe(self, slow: bool) -> float | None:
        """One look at the source (see the class docstring); returns the new rate or None."""
        with self._lock:
            now = self._clock()
            read = self._bytes / max(now - self._since, 1e-3)
            self._bytes, self._since = 0, now
            if slow:
                self.slow_looks += 1
                if self._limiter is None:
                    self._before = read
                    self._throttled_since = now
                    self._limiter = RateLimiter(max(self.floor, read / 2), clock=self._clock,
                                                sleep=self._sleep)
                else:
                    self._limiter.rate = max(self.floor, self._limiter.rate / 2)
            elif self._limiter is not None:
                faster = self._limiter.rate * 2
                if faster >= self._before:
                    self._limiter = None
                    self.throttled_s += self._since_throttled(now)
                    self._throttled_since = None
                else:
                    self._limiter.rate = faster
            rate = self._limiter.rate if self._limiter is not None else None
            if rate is not None:
                self.lowest = rate if self.lowest is None else min(self.lowest, rate)
            return rate

    def _since_throttled(self, now: float) -> float:
        """Seconds throttled since the throttle began (0 when it is off); lock held."""
        return 0.0 if self._throttled_since is None else now - self._throttled_since

    def release(self) -> None:
        """End any throttling now (the controller can no longer judge the source)."""
        with self._lock:
            if self._limiter is not None:
                now = self._clock()
                self.throttled_s += self._since_throttled(now)
                self._limiter, self._throttled_since = None, None

    def finish(self) -> None:
        """Close the books: a throttle still on counts until now."""
        with self._lock:
            if self._throttled_since is not None:
                now = self._clock()
                self.throttled_s += now - self._throttled_since
                self._throttled_since = now
