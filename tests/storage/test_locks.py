"""Repository locks: shared vs exclusive, staleness, refresh, loss, and the race rule."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from vmkeep import clock
from vmkeep.storage.backend import open_backend
from vmkeep.storage.errors import LockLost, RepositoryLocked
from vmkeep.storage.locks import EXCLUSIVE, SHARED, acquire, list_locks, remove_stale
from vmkeep.storage.repository import Repository


def test_shared_locks_coexist_exclusive_does_not(repo: Repository) -> None:
    with repo.lock(SHARED), repo.lock(SHARED):
        assert len(list_locks(repo.backend)) == 2
        with pytest.raises(RepositoryLocked) as err:
            repo.lock(EXCLUSIVE)
        assert err.value.exit_code == 11
        assert "shared lock" in err.value.get_message() and str(socket.gethostname()) in str(
            err.value
        )
    with repo.lock(EXCLUSIVE):
        with pytest.raises(RepositoryLocked):
            repo.lock(SHARED, wait=0)  # leases wait 5 minutes by default
        with pytest.raises(RepositoryLocked):
            repo.lock(EXCLUSIVE)
    assert list_locks(repo.backend) == []  # released


def test_wait_retries_until_released(repo: Repository) -> None:
    held = repo.lock(EXCLUSIVE)
    threading.Timer(0.5, held.release).start()
    with repo.lock(SHARED, wait=600):  # waits for the release; the bound only stops a hang
        pass


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(repo: Repository, lock_id: str, kind: str, host: str, pid: int, age: timedelta) -> None:
    when = clock.now() - age
    body = {
        "format": "vmkeep-lock",
        "version": 1,
        "kind": kind,
        "hostname": host,
        "pid": pid,
        "created": when.isoformat(),
        "refreshed": when.isoformat(),
        "command": "test",
    }
    repo.backend.put(f"locks/{lock_id}", json.dumps(body).encode())


def test_staleness_needs_age_and_a_dead_owner(repo: Repository) -> None:
    here = socket.gethostname()
    old = timedelta(hours=1)
    _plant(repo, "a" * 32, EXCLUSIVE, here, _dead_pid(), timedelta(minutes=1))  # young
    with pytest.raises(RepositoryLocked):
        repo.lock(SHARED, wait=0)  # leases wait 5 minutes by default
    repo.backend.delete(f"locks/{'a' * 32}")
    _plant(repo, "b" * 32, EXCLUSIVE, here, 1, old)  # old, but its owner (pid 1) lives here
    with pytest.raises(RepositoryLocked):
        repo.lock(SHARED, wait=0)  # leases wait 5 minutes by default
    assert remove_stale(repo.backend) == []
    repo.backend.delete(f"locks/{'b' * 32}")
    _plant(repo, "c" * 32, EXCLUSIVE, here, _dead_pid(), old)  # old and dead: stale
    _plant(repo, "d" * 32, EXCLUSIVE, "elsewhere.example", 1, old)  # other host, not refreshed
    with repo.lock(SHARED):  # stale locks do not block, and are not removed silently
        assert {i.id for i in list_locks(repo.backend)} >= {"c" * 32, "d" * 32}
    removed = remove_stale(repo.backend)
    assert {i.id for i in removed} == {"c" * 32, "d" * 32}


def test_fake_clock_makes_an_abandoned_lock_stale(repo: Repository) -> None:
    lock = repo.lock(EXCLUSIVE, refresh=0)
    info = lock.info
    # pretend the holder died: same host, dead pid
    _plant(repo, info.id, EXCLUSIVE, info.hostname, _dead_pid(), timedelta(0))
    with pytest.raises(RepositoryLocked):
        repo.lock(SHARED, wait=0)  # leases wait 5 minutes by default
    with clock.frozen(clock.now() + timedelta(minutes=31)), repo.lock(SHARED):
        pass


def test_refresh_and_loss(repo: Repository) -> None:
    lock = repo.lock(SHARED, refresh=0)  # refreshed by hand: no thread racing the deletion
    first = lock.info.refreshed
    with clock.frozen(clock.now() + timedelta(minutes=5)):
        lock.refresh()
    assert lock.info.refreshed > first
    lock.ensure()
    repo.backend.delete(lock.info.key)  # someone removed it as stale
    with pytest.raises(LockLost):
        lock.ensure()
    lock.refresh()  # a refresh does not resurrect it
    assert not repo.backend.exists(lock.info.key)
    lock.release()


def test_refresh_thread_runs(repo: Repository) -> None:
    lock = repo.lock(SHARED, refresh=0.05)
    first = lock.info.refreshed
    with clock.frozen(clock.now() + timedelta(minutes=1)):
        deadline = time.monotonic() + 300  # the thread runs every 0.05 s; this only stops a hang
        while lock.info.refreshed == first and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        assert lock.info.refreshed > first
    lock.release()


def test_racing_exclusive_requests_never_both_win(tmp_path) -> None:  # type: ignore[no-untyped-def]
    backend = open_backend(str(tmp_path))
    holding: list[int] = []
    most = 0
    guard = threading.Lock()

    def contender(n: int, barrier: threading.Barrier) -> None:
        nonlocal most
        barrier.wait()
        try:
            lock = acquire(backend, EXCLUSIVE if n % 2 else SHARED, wait=0, refresh=0)
        except RepositoryLocked:
            return
        with guard:
            holding.append(n)
            kinds = {m % 2 for m in holding}
            if 1 in kinds:
                most = max(most, len(holding))
        threading.Event().wait(0.02)
        with guard:
            holding.remove(n)
        lock.release()

    for _ in range(20):
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=contender, args=(n, barrier)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert most <= 1  # an exclusive holder was never accompanied


def test_an_unreadable_lock_counts_as_the_oldest_lease(repo: Repository) -> None:
    """Prune cannot tell whose lease a garbled lock object was: it holds everything (created at
    the epoch) until it turns stale, never nothing."""
    from vmkeep.storage.locks import live_leases

    with repo.lock(SHARED) as mine:  # (an unreadable lock also blocks new leases, as exclusive)
        repo.backend.put("locks/" + "cd" * 16, b"{not json")
        leases = live_leases(repo.backend)
        assert {lease.id for lease in leases} == {mine.info.id, "cd" * 16}
        garbled = next(lease for lease in leases if lease.problem)
        assert garbled.created.timestamp() == 0
