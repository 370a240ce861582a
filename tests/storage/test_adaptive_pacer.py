"""The pacer of storage latency control (:class:`vmkeep.storage.rate_limit.AdaptivePacer`): free
until a slow look, then half the rate read so far, halved per slow look down to the floor,
doubled per calm look until faster than before, then free again — on a fake clock."""

from __future__ import annotations

import pytest

from tests.storage.test_rate_limit import FakeClock
from vmkeep.storage.rate_limit import AdaptivePacer, RateLimiter, both

MIB = 1 << 20


def _clock() -> FakeClock:
    clock = FakeClock()
    clock.now = 0.0  # times below are from the pacer's start
    return clock


def test_halves_per_slow_look_down_to_the_floor_and_recovers() -> None:
    clock = _clock()
    pacer = AdaptivePacer(8 * MIB, clock=clock, sleep=clock.sleep)
    pacer.take(400 * MIB)  # 400 MiB read in the first 4 s: 100 MiB/s
    clock.now = 4.0
    assert pacer.rate is None and clock.sleeps == []
    assert pacer.observe(True) == 50 * MIB
    clock.now = 34.0
    assert pacer.observe(True) == 25 * MIB
    clock.now = 64.0
    assert pacer.observe(True) == 12.5 * MIB
    clock.now = 94.0
    assert pacer.observe(True) == 8 * MIB  # the floor
    clock.now = 124.0
    assert pacer.observe(True) == 8 * MIB
    assert pacer.lowest == 8 * MIB and pacer.slow_looks == 5
    clock.now = 154.0
    assert pacer.observe(False) == 16 * MIB
    clock.now = 184.0
    assert pacer.observe(False) == 32 * MIB
    clock.now = 214.0
    assert pacer.observe(False) == 64 * MIB
    clock.now = 244.0
    assert pacer.observe(False) is None  # 128 MiB/s would be above the 100 read before: free
    assert pacer.throttled_s == 240.0


def test_while_throttled_reads_wait_for_the_rate() -> None:
    clock = _clock()
    pacer = AdaptivePacer(1 * MIB, clock=clock, sleep=clock.sleep)
    clock.now = 1.0
    assert pacer.observe(True) == 1 * MIB  # nothing read yet: straight to the floor
    for _ in range(8):
        pacer.take(MIB // 2)
    assert clock.now == pytest.approx(1.0 + 4.0 - 0.25)  # 4 MiB at 1 MiB/s, less the burst
    pacer.finish()
    assert pacer.throttled_s == pytest.approx(clock.now - 1.0)


def test_release_ends_throttling_at_once() -> None:
    """A controller that can no longer judge the source (a failed look) frees the reads."""
    clock = _clock()
    pacer = AdaptivePacer(1 * MIB, clock=clock, sleep=clock.sleep)
    assert pacer.observe(True) == 1 * MIB
    clock.now = 10.0
    pacer.release()
    assert pacer.rate is None and pacer.throttled_s == 10.0
    pacer.take(100 * MIB)
    assert clock.sleeps == []


def test_both_books_with_each() -> None:
    clock = _clock()
    a = RateLimiter(MIB, clock=clock, sleep=clock.sleep)
    assert both(None, None) is None and both(a, None) is a and both(None, a) is a
    b = RateLimiter(2 * MIB, clock=clock, sleep=clock.sleep)
    paired = both(a, b)
    assert paired is not None
    paired.take(MIB)
    assert a.booked == b.booked == MIB


def test_a_floor_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AdaptivePacer(0)
