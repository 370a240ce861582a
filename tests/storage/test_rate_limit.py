"""Bandwidth limits: the token bucket on a fake clock, the throttled backend's slicing, and
``open_backend`` wrapping targets under ``VMKEEP_LIMIT_UPLOAD`` / ``_DOWNLOAD``."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from vmkeep.storage.backend import open_backend
from vmkeep.storage.backends.fsspec_backend import FsspecBackend
from vmkeep.storage.backends.local import LocalBackend
from vmkeep.storage.backends.throttled import ThrottledBackend
from vmkeep.storage.errors import ObjectNotFound
from vmkeep.storage.rate_limit import SLICE, Limits, RateLimiter, current


class FakeClock:
    """A clock that moves only when slept on (or told to)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_steady_stream_keeps_to_the_rate_after_one_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(SLICE, burst=SLICE, clock=clock, sleep=clock.sleep)  # a slice a second
    for _ in range(10):
        limiter.take(SLICE)
    # the first slice is the burst; the other nine take a second each
    assert clock.now - 1000.0 == pytest.approx(9.0)
    assert limiter.booked == 10 * SLICE


def test_idle_time_refills_the_bucket_to_the_burst_only() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000, burst=500, clock=clock, sleep=clock.sleep)
    limiter.take(500)
    assert clock.sleeps == []
    clock.now += 3600  # an hour idle does not save an hour of bandwidth
    limiter.take(500)
    assert clock.sleeps == []
    limiter.take(500)
    assert clock.sleeps == [pytest.approx(0.5)]


def test_one_large_booking_waits_for_all_of_it() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000, burst=100, clock=clock, sleep=clock.sleep)
    limiter.take(10_000)
    assert clock.sleeps == [pytest.approx(9.9)]


def test_threads_book_one_after_another_never_the_same_time() -> None:
    """Concurrent callers share the bucket: their waits are consecutive bookings."""
    clock = FakeClock()
    waits: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            waits.append(seconds)

    limiter = RateLimiter(100, burst=100, clock=clock, sleep=record)  # the clock stands still

    def worker() -> None:
        for _ in range(5):
            limiter.take(100)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([float(i) for i in range(1, 40)])


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)


class Recorder:
    """Stands in for a limiter: records every booking."""

    def __init__(self) -> None:
        self.taken: list[int] = []

    def take(self, n: int) -> None:
        self.taken.append(n)


def _throttled(root: Path) -> tuple[ThrottledBackend, Recorder, Recorder]:
    up, down = Recorder(), Recorder()
    limits = Limits(upload=up, download=down)  # type: ignore[arg-type]
    return ThrottledBackend(LocalBackend(str(root)), limits), up, down


def test_uploads_and_downloads_go_in_paced_slices(tmp_path: Path) -> None:
    backend, up, down = _throttled(tmp_path)
    data = os.urandom(3 * SLICE + 1000)
    backend.put("packs/ab/abcd", data)
    assert up.taken == [SLICE, SLICE, SLICE, 1000]
    assert (tmp_path / "packs" / "ab" / "abcd").read_bytes() == data
    assert backend.get("packs/ab/abcd") == data
    assert down.taken == [SLICE, SLICE, SLICE, 1000]
    down.taken.clear()
    assert backend.get("packs/ab/abcd", SLICE - 10, SLICE + 20) == data[SLICE - 10 : 2 * SLICE + 10]
    assert down.taken == [SLICE, 20]
    down.taken.clear()
    assert backend.get("packs/ab/abcd", len(data) - 5, 100) == data[-5:]  # shorter than asked
    assert down.taken == [5]


def test_an_object_of_exactly_one_slice_and_a_small_one(tmp_path: Path) -> None:
    backend, _, down = _throttled(tmp_path)
    backend.put("index/a", b"x" * SLICE)
    assert backend.get("index/a") == b"x" * SLICE
    assert down.taken == [SLICE]  # its size says it ends there: no read at the end
    down.taken.clear()
    backend.put("config", b"small")
    assert backend.get("config") == b"small"
    assert down.taken == [5]  # one read: an object replaced in place is never joined
    with pytest.raises(ObjectNotFound):
        backend.get("missing")
    assert backend.get("config", 2, 0) == b""


def test_the_environment_puts_every_target_under_the_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(open_backend(str(tmp_path)), LocalBackend)  # no limit: nothing in between
    monkeypatch.setenv("VMKEEP_LIMIT_UPLOAD", "2048")
    local = open_backend(str(tmp_path))
    assert isinstance(local, ThrottledBackend)
    assert local.limits.upload is not None and local.limits.upload.rate == 2048 * 1024
    assert local.limits.download is None
    assert current() is local.limits  # one bucket per direction for the whole process
    memory = open_backend("memory://rate-limit-test")
    assert isinstance(memory, ThrottledBackend) and isinstance(memory.inner, FsspecBackend)
    monkeypatch.setenv("VMKEEP_LIMIT_DOWNLOAD", "512")
    both = open_backend(str(tmp_path))
    assert isinstance(both, ThrottledBackend) and both.limits.download is not None


def test_a_malformed_limit_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmkeep.errors import UsageError

    monkeypatch.setenv("VMKEEP_LIMIT_UPLOAD", "0")
    with pytest.raises(UsageError, match="VMKEEP_LIMIT_UPLOAD"):
        open_backend(str(tmp_path))


def test_a_disk_backup_books_every_source_read(tmp_path: Path) -> None:
    from tests.storage.storage_helpers import write_image
    from vmkeep.storage.disk_backup import backup_disk
    from vmkeep.storage.repository import Repository

    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    image = write_image(tmp_path / "disk.img")
    reads = Recorder()
    with open(image, "rb") as f:
        result = backup_disk(repo, f, image.stat().st_size, read_limit=reads)  # type: ignore[arg-type]
    stats = result.stats
    assert sum(reads.taken) == stats.bytes_read + stats.bytes_lookback > 0


def test_the_read_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmkeep.storage.rate_limit import source_reads

    monkeypatch.delenv("VMKEEP_LIMIT_READ", raising=False)
    assert source_reads() is None
    monkeypatch.setenv("VMKEEP_LIMIT_READ", "4096")
    limit = source_reads()
    assert limit is not None and limit.rate == 4 << 20 and source_reads() is limit
