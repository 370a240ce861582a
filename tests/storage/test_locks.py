"""Repository locks: shared vs exclusive, staleness, refresh, loss, and the race rule."""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from vmkeep import clock
from vmkeep.storage.backend import Backend, open_backend
from vmkeep.storage.errors import LockLost, RepositoryLocked
from vmkeep.storage.locks import EXCLUSIVE, SHARED, Lock, acquire, list_locks, remove_stale
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


def _most_holders_at_once(
    tmp_path: Path, take: Callable[[Backend, int], Lock], counts: Callable[[list[int]], bool]
) -> int:
    """Twenty rounds of four threads racing ``take(backend, n)`` (which raises
    ``RepositoryLocked`` when it loses); the most holders seen at once while ``counts`` says
    the holders present matter."""
    backend = open_backend(str(tmp_path))
    holding: list[int] = []
    most = 0
    guard = threading.Lock()

    def contender(n: int, barrier: threading.Barrier) -> None:
        nonlocal most
        barrier.wait()
        try:
            lock = take(backend, n)
        except RepositoryLocked:
            return
        with guard:
            holding.append(n)
            if counts(holding):
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
    return most


def test_racing_exclusive_requests_never_both_win(tmp_path) -> None:  # type: ignore[no-untyped-def]
    most = _most_holders_at_once(
        tmp_path,
        lambda backend, n: acquire(backend, EXCLUSIVE if n % 2 else SHARED, wait=0, refresh=0),
        lambda holding: any(m % 2 for m in holding),  # an exclusive holder among them
    )
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


class _SlowPuts:
    """A backend whose writes block on ``gate`` once ``hold`` is set (a target that stopped
    answering in the middle of a lock refresh); ``entered`` is set when a write is stuck."""

    def __init__(self, backend: object) -> None:
        self._backend = backend
        self.hold = threading.Event()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)

    def put(self, key: str, data: bytes) -> None:
        if self.hold.is_set():
            self.entered.set()
            self.gate.wait(600)  # the bound only stops a hang
        self._backend.put(key, data)  # type: ignore[attr-defined]


def _stuck_refresh(tmp_path, release_wait: float):  # type: ignore[no-untyped-def]
    """A lock whose refresh thread is stuck in a write (returns the backend and the lock)."""
    slow = _SlowPuts(open_backend(str(tmp_path)))
    lock = acquire(slow, SHARED, refresh=0.02, release_wait=release_wait)  # type: ignore[arg-type]
    slow.hold.set()
    assert slow.entered.wait(600)  # the thread refreshes every 0.02 s; this only stops a hang
    return slow, lock


def test_release_waits_for_a_refresh_in_flight(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A refresh in flight would re-create the lock object after release deleted it, so release
    waits for the refresh thread before deleting."""
    slow, lock = _stuck_refresh(tmp_path, release_wait=600)
    errors: list[BaseException] = []

    def release() -> None:
        try:
            lock.release()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    releaser = threading.Thread(target=release)
    releaser.start()
    releaser.join(0.3)
    assert releaser.is_alive()  # waiting for the stuck refresh
    assert slow.exists(lock.info.key)  # not deleted under the refresh's feet
    slow.gate.set()  # the target answers again: the refresh writes, then release deletes
    releaser.join(600)
    assert not releaser.is_alive() and errors == []
    assert lock._thread is not None and not lock._thread.is_alive()
    assert list_locks(slow) == []  # type: ignore[arg-type]


def test_release_gives_up_on_a_hung_refresh(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.cli.common import run_guarded
    from vmkeep.storage.errors import LockReleaseHung

    slow, lock = _stuck_refresh(tmp_path, release_wait=0.05)
    with pytest.raises(LockReleaseHung) as err:
        lock.release()
    assert err.value.exit_code == 20
    assert lock.info.key in str(err.value) and "0.05 s" in str(err.value)
    assert not slow.exists(lock.info.key)  # deleted anyway
    slow.gate.set()  # the stuck write completes and re-creates the object; the thread removes it
    assert lock._thread is not None
    lock._thread.join(600)
    assert not lock._thread.is_alive()
    assert list_locks(slow) == []  # type: ignore[arg-type]

    def fail() -> None:
        raise LockReleaseHung("locks/" + "ab" * 16, "600 s")

    assert run_guarded(fail) == 20  # the CLI exits with the error's own code


def test_lock_release_hung_has_its_own_exit_code() -> None:
    from vmkeep.errors import VmkeepError
    from vmkeep.storage.errors import LockReleaseHung

    def every(cls: type) -> list[type]:
        return [cls, *(sub for s in cls.__subclasses__() for sub in every(s))]

    for layer in ("browse", "disks", "lab", "licensing", "scsi", "tape", "vsphere"):
        importlib.import_module(f"vmkeep.{layer}.errors")  # every layer's errors, registered

    users = {c.__name__ for c in every(VmkeepError) if c.exit_code == LockReleaseHung.exit_code}
    assert users == {"LockReleaseHung"}


def test_release_with_a_running_refresh_thread(repo: Repository) -> None:
    """The normal path: release stops the idle refresh thread at once — not at its next
    refresh, 30 s away — and deletes the lock.  (Bounds generous for a loaded machine: a 0.5 s
    release wait could run out under load and raise LockReleaseHung.)"""
    lock = repo.lock(SHARED, refresh=30, release_wait=60)
    assert lock._thread is not None and lock._thread.is_alive()
    started = time.monotonic()
    lock.release()
    assert time.monotonic() - started < 20  # not the refresh interval
    assert lock._thread is not None and not lock._thread.is_alive()
    assert list_locks(repo.backend) == []
    lock.release()  # idempotent


def test_a_hung_release_does_not_hide_the_error_of_the_locked_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.storage.errors import LockReleaseHung

    slow, lock = _stuck_refresh(tmp_path, release_wait=0.05)
    with pytest.raises(ValueError, match="the work failed"), lock:
        raise ValueError("the work failed")  # reported, not LockReleaseHung (that is logged)
    with pytest.raises(LockReleaseHung), lock:
        pass  # nothing else failed: the hang is the error
    slow.gate.set()
    assert lock._thread is not None
    lock._thread.join(600)


def test_a_mutex_admits_one_holder_whatever_the_kinds(repo: Repository) -> None:
    with repo.lock(SHARED, mutex="copy from a") as first:
        assert json.loads(repo.backend.get(first.info.key))["mutex"] == "copy from a"
        with pytest.raises(RepositoryLocked) as err:
            repo.lock(SHARED, wait=0, mutex="copy from a")
        assert "shared lock" in err.value.get_message()
        with repo.lock(SHARED, mutex="copy from b"), repo.lock(SHARED), repo.lock("read"):
            pass  # another mutex, or none: leases as ever
        first.refresh()
        assert json.loads(repo.backend.get(first.info.key))["mutex"] == "copy from a"
    with repo.lock(SHARED) as plain:  # no mutex: the field is left out (older clients' shape)
        assert "mutex" not in json.loads(repo.backend.get(plain.info.key))
    with repo.lock(SHARED, wait=0, mutex="copy from a"):
        pass  # free again once released


def test_racing_mutex_requests_never_both_win(tmp_path) -> None:  # type: ignore[no-untyped-def]
    most = _most_holders_at_once(
        tmp_path,
        lambda backend, n: acquire(backend, SHARED, wait=0, refresh=0, mutex="copy from x"),
        lambda holding: True,
    )
    assert most <= 1  # never two holders (all may back off in a round: wait=0)


def test_a_stop_between_writing_the_lock_and_handing_it_out_leaves_no_lock(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM/SIGHUP raise ``Terminated`` in the main thread wherever it is; one arriving after
    the lock object was written but before the caller holds the :class:`Lock` (the second
    conflict check, building the Lock) deletes the object again — it was never handed out, so
    nobody else would release it (a CI run caught it left behind)."""
    import signal

    import vmkeep.storage.locks as locks
    from vmkeep.errors import Terminated

    first_conflict = locks._first_conflict
    calls: list[int] = []

    def stopped_on_the_second_check(*args, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise Terminated(signal.SIGTERM)
        return first_conflict(*args, **kw)

    monkeypatch.setattr(locks, "_first_conflict", stopped_on_the_second_check)
    with pytest.raises(Terminated):
        repo.lock(SHARED)
    assert list_locks(repo.backend) == []
    monkeypatch.setattr(locks, "_first_conflict", first_conflict)

    def stopped_building(*args, **kw):  # type: ignore[no-untyped-def]
        raise Terminated(signal.SIGHUP)

    monkeypatch.setattr(locks, "Lock", stopped_building)
    with pytest.raises(Terminated):
        repo.lock(SHARED)
    assert list_locks(repo.backend) == []


@pytest.mark.parametrize("exit_path", ["sys.exit", "fast_exit"])
def test_a_lock_still_held_when_its_process_exits_is_released(
    tmp_path: Path, exit_path: str
) -> None:
    """A stop signal that lands after :func:`acquire` returned but before the caller's ``with``
    (or a holder that never released) left the lock object behind (another CI run caught it,
    after SIGHUP): the process's exit now releases it — the plain interpreter exit, and the
    CLI's fast exit (``os._exit`` after the exit hooks)."""
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    leave = (
        "from vmkeep.cli import fast_exit; fast_exit.install(); fast_exit.leave(143); "
        if exit_path == "fast_exit" else ""
    )
    script = (
        "import sys; from vmkeep.storage.repository import Repository; "
        f"{leave}"
        f"r = Repository.open({str(repo)!r}); held = r.lock('shared', refresh=0.05); "
        "print(len(list(__import__('pathlib').Path(sys.argv[1]).iterdir())), flush=True); "
        "sys.exit(143)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(repo / "locks")], capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 143, done.stderr
    assert done.stdout.strip() == "1"  # it was held
    assert list((repo / "locks").iterdir()) == []


def test_a_command_gives_its_reader_lease_back_before_the_exit(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader lease left to a repository object that outlives the command (kept by a cache,
    a traceback) was given back only at the interpreter's exit — over S3 that delete fails
    there (its client refuses new work once ``concurrent.futures`` has shut down, seen in
    ``check``), and the lease stayed behind.  The CLI gives back what a command left before it
    returns; locks held before the command started are not its to release."""
    import vmkeep.cli.main as cli

    kept: list[Repository] = []
    before = repo.lock(SHARED)  # the caller's own, from before the command

    def command() -> int:
        reader = Repository.open(repo.backend.location)
        reader.ensure_lease()
        kept.append(reader)  # outlives the command
        return 0

    monkeypatch.setattr(cli, "_run", command)
    monkeypatch.setattr(sys, "argv", ["vmkeep", "check"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0
    assert [lk.id for lk in list_locks(repo.backend)] == [before.info.id]
    before.release()
