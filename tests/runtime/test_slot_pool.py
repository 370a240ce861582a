"""SlotPool: a run keeps the slots its own later children expect, never lends more than the
server granted, and never waits while holding a slot (pure logic; the real Prefect server is in
``test_prefect_runtime.py``)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from vmkeep.runtime.slot_pool import Locked, SlotPool


class FakeServer:
    """Global slots with limits, all-or-none per lease, like Prefect's global limits."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = limits
        self.used: Counter[str] = Counter()
        self.leases: dict[str, list[str]] = {}
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.closed = False

    def acquire(self, names: list[str]) -> str:
        with self.lock:
            self.calls["acquire"] += 1
            if any(self.used[n] >= self.limits.get(n, 1) for n in names):
                raise Locked(0.01)
            self.used.update(names)
            lease = f"lease-{self.calls['acquire']}"
            self.leases[lease] = list(names)
            return lease

    def release(self, lease: str) -> None:
        with self.lock:
            self.calls["release"] += 1
            self.used.subtract(self.leases.pop(lease))

    def renew(self, leases: list[str]) -> None:
        self.calls["renew"] += 1

    def close(self) -> None:
        self.closed = True


def test_sequential_children_ask_the_server_once_per_slot() -> None:
    server = FakeServer({"ds1": 2, "host1": 4})
    pool = SlotPool(server)
    for key in ("a", "b", "c"):
        pool.expect(key, ["ds1", "host1"])
    for key in ("a", "b", "c"):
        with pool.hold(["host1", "ds1"], key):
            assert server.used == {"ds1": 1, "host1": 1}
        pool.done(key)
    assert server.calls == {"acquire": 1, "release": 1}  # the last child returned it
    assert pool.server_acquisitions == {"ds1": 1, "host1": 1}
    assert server.used == {"ds1": 0, "host1": 0} and not server.leases
    pool.close()
    assert server.closed


def test_a_slot_nobody_expects_goes_back_at_once() -> None:
    server = FakeServer({"ds1": 1, "ds2": 1})
    pool = SlotPool(server)
    pool.expect("a", ["ds1"])
    pool.expect("b", ["ds2"])
    with pool.hold(["ds1"], "a"):
        pass
    assert not server.leases  # b wants ds2, not ds1
    pool.expect("c", ["ds2"])
    with pool.hold(["ds2"], "b"):
        pass
    assert list(server.leases.values()) == [["ds2"]]  # kept for c
    pool.done("c")  # c ended without taking it (failed early)
    assert not server.leases
    pool.close()


def test_idle_leases_cover_part_and_the_rest_comes_in_one_call() -> None:
    server = FakeServer({"ds1": 2, "ds2": 2, "host1": 4})
    pool = SlotPool(server)
    pool.expect("a", ["ds1"])
    pool.expect("b", ["ds1", "ds2", "host1"])
    with pool.hold(["ds1"], "a"):
        pass
    with pool.hold(["ds1", "ds2", "host1"], "b"):
        assert server.calls["acquire"] == 2
        assert sorted(server.leases.values()) == [["ds1"], ["ds2", "host1"]]
    assert not server.leases
    pool.close()


@contextmanager
def _threads(n: int, target: object) -> Iterator[list[threading.Thread]]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]  # type: ignore[arg-type]
    for t in threads:
        t.start()
    yield threads
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()


def test_limits_hold_across_concurrent_children() -> None:
    server = FakeServer({"ds1": 2, "host1": 3})
    pool = SlotPool(server)
    keys = [f"vm{i}" for i in range(8)]
    for key in keys:
        pool.expect(key, ["ds1", "host1"])
    active, peak = Counter[str](), Counter[str]()
    lock = threading.Lock()
    gate = threading.Barrier(8, timeout=300)  # a hang guard: 8 threads to start

    def child(i: int) -> None:
        gate.wait()
        with pool.hold(["ds1", "host1"], keys[i]):
            with lock:
                active["ds1"] += 1
                peak["ds1"] = max(peak["ds1"], active["ds1"])
                assert server.used["ds1"] <= 2
            threading.Event().wait(0.01)
            with lock:
                active["ds1"] -= 1
        pool.done(keys[i])

    with _threads(8, child):
        pass
    assert 1 <= peak["ds1"] <= 2
    assert not server.leases and server.used["ds1"] == 0
    pool.close()


def test_a_turned_away_child_holds_nothing_while_it_waits() -> None:
    """Another run holds host1; our child b needs ds1 (idle in our pool) and host1: while b
    waits, the pool must not sit on ds1 (the other run may be waiting for it)."""
    server = FakeServer({"ds1": 1, "host1": 1})
    other = server.acquire(["host1"])  # another run's slot
    pool = SlotPool(server)
    pool.expect("a", ["ds1"])
    pool.expect("b", ["ds1", "host1"])
    with pool.hold(["ds1"], "a"):
        pass
    assert list(server.leases.values()) == [["host1"], ["ds1"]]
    seen: list[dict[str, int]] = []

    def waiting_b(_: int) -> None:
        with pool.hold(["ds1", "host1"], "b"):
            pass

    def other_run(_: int) -> None:
        # once b has been turned away, ds1 is free on the server: the other run can take it
        while True:
            try:
                lease = server.acquire(["ds1"])
            except Locked:
                threading.Event().wait(0.005)
                continue
            seen.append(dict(server.used))
            server.release(lease)
            server.release(other)
            return

    with _threads(1, waiting_b), _threads(1, other_run):
        pass
    assert seen and seen[0]["ds1"] == 1
    assert not server.leases
    pool.close()


def test_close_returns_everything_and_stops_renewing() -> None:
    server = FakeServer({"ds1": 1})
    pool = SlotPool(server, renew_every_s=0.01)
    pool.expect("a", ["ds1"])
    pool.expect("b", ["ds1"])
    with pool.hold(["ds1"], "a"):
        pass
    assert server.leases  # kept idle for b, and renewed meanwhile
    deadline = time.monotonic() + 60
    while not server.calls["renew"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.calls["renew"] >= 1
    pool.close()
    assert not server.leases and server.closed
    assert pool._renewer is not None
    pool._renewer.join(timeout=60)
    assert not pool._renewer.is_alive()


@pytest.mark.parametrize("fail", [True, False])
def test_slots_go_back_when_the_block_fails(fail: bool) -> None:
    server = FakeServer({"ds1": 1})
    pool = SlotPool(server)
    with pytest.raises(RuntimeError) if fail else _nothing(), pool.hold(["ds1"]):
        if fail:
            raise RuntimeError("boom")
    assert not server.leases
    pool.close()


@contextmanager
def _nothing() -> Iterator[None]:
    yield
