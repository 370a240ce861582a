"""Repository locks and leases: backups and readers share the repository with prune.

A lock is an object ``locks/<32 hex>`` holding JSON (encrypted like every other object in an
encrypted repository)::

    {"format": "vmkeep-lock", "version": 1, "kind": "shared" | "read" | "prune" | "exclusive",
     "hostname": str, "pid": int, "created": ISO-8601 UTC, "refreshed": ISO-8601 UTC,
     "command": str[, "mutex": str]}

Kinds (the garbage-collection protocol of ``docs/format.md``, GC version 2):

* ``shared`` — a **writer lease**: backups and ``forget``, from before they read the index until
  their manifest is written;
* ``read`` — a **reader lease**: restores, mounts, verification, exports; taken automatically by
  :meth:`vmkeep.storage.repository.Repository.load_index` before the index is read, held until
  the repository object is closed (or the process ends);
* ``prune`` — garbage collection: one at a time, beside any number of leases.  Prune deletes a
  pack only once every live lease was created after the pack left the index (see
  :mod:`vmkeep.storage.gc`), so a lease is what keeps a running backup's or reader's data;
* ``exclusive`` — truly exclusive operations (key changes, upgrades).

Leases (``shared``, ``read``) conflict only with ``exclusive``; ``prune`` conflicts with
``prune`` and ``exclusive``; ``exclusive`` with everything.  A lock may also carry a **mutex**
name (the optional field ``"mutex": str``, left out when empty; clients that predate it ignore
it): two live locks with the same mutex conflict whatever their kinds — ``copy`` holds its
destination's writer lease under ``copy from <source id>``, so two copies of one source into one
destination never run at once, from any host.  Leases wait for an exclusive
operation (default ``VMKEEP_LOCK_WAIT``, else :data:`LEASE_WAIT` seconds) instead of failing.

Rules
-----
* Acquiring: write our lock object, then list every lock; if a live lock conflicts remove ours
  and raise :class:`RepositoryLocked` naming the holder (or retry until ``wait`` seconds have
  passed).
  Because each side writes before it looks, two racing conflicting requests cannot both win
  (at worst both back off), on any store with read-after-write listing (local, SFTP, SMB, S3).
* A holder refreshes its lock every ``refresh`` seconds from a daemon thread.  If the object
  vanished (someone judged it stale and removed it) the lock is marked **lost**;
  :meth:`Lock.ensure` then raises :class:`LockLost` and the holder must not commit.  (Without a
  conditional put, a refresh racing the removal can re-create the object once; the grace period
  of prune covers that window.)  :meth:`Lock.ensure` also raises (:class:`LeaseExpired`) when the
  lock was not refreshed for half of ``stale_after``: prune may then have judged it stale and
  deleted what it protected, so a backup that outlived its lease refuses to commit.
* **Stale** = not refreshed for ``stale_after`` (default 30 min, time from :mod:`vmkeep.clock`)
  *and*, when it was taken on this host, its pid is no longer alive.  A lock whose owner lives on
  this host is therefore never stale, however old.  Stale locks do not block acquisition; they are
  reported (logged, and listed by ``vmkeep unlock``) and removed only by ``vmkeep unlock`` — never
  silently.  The grace period of prune (see :mod:`vmkeep.storage.prune`) protects data written by
  the owner of a lock that was judged stale but is in fact alive on another host.

Release first stops the refresh thread and waits for it to finish (a refresh in flight could
otherwise re-create the lock object after release deleted it), then deletes the lock object
(idempotent).  The wait is bounded (:data:`RELEASE_WAIT` seconds, ``release_wait`` of
:func:`acquire`): a refresh still stuck in the backend after that raises
:class:`LockReleaseHung` (exit 20) once release has deleted the object anyway; the thread deletes
it again if its stuck write ever completes.  A lock still held when its process exits (a stop
signal landing between :func:`acquire` and the caller's ``with``, or a holder that never
released) is released by the interpreter's exit (a ``weakref.finalize`` callback marked
``atexit``, which the CLI's fast exit runs too).  A killed process leaves its lock behind; it turns
stale after ``stale_after`` and ``vmkeep unlock`` removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from vmkeep import clock
from vmkeep.settings import settings
from vmkeep.storage.backend import Backend
from vmkeep.storage.errors import (
    LeaseExpired,
    LockLost,
    LockReleaseHung,
    ObjectNotFound,
    RepositoryLocked,
    StorageError,
)

log = logging.getLogger(__name__)

LOCK_PREFIX = "locks"
LOCK_FORMAT = "vmkeep-lock"
SHARED = "shared"
READ = "read"
PRUNE = "prune"
EXCLUSIVE = "exclusive"
KINDS = (SHARED, READ, PRUNE, EXCLUSIVE)
#: Kinds that protect data from prune (a lease's holder may still read or reference it).
LEASES = (SHARED, READ)
DEFAULT_STALE_AFTER = timedelta(minutes=30)
#: How long a lease waits for an exclusive operation by default (seconds).
LEASE_WAIT = 300.0
#: How long :meth:`Lock.release` waits for a refresh in flight before raising
#: :class:`LockReleaseHung` (seconds; a refresh is one small write, so this only stops a hang).
RELEASE_WAIT = 600.0


def _env_seconds(name: str, default: float) -> float:
    value = getattr(settings(), name.removeprefix("VMKEEP_").lower())
    return default if value is None else float(value)


def default_wait(kind: str = EXCLUSIVE) -> float:
    """How long lock acquisition retries by default: ``VMKEEP_LOCK_WAIT`` seconds, else
    :data:`LEASE_WAIT` for leases (they wait out an exclusive operation) and 0 otherwise."""
    return _env_seconds("VMKEEP_LOCK_WAIT", LEASE_WAIT if kind in LEASES else 0.0)


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LockInfo:
    """A lock object as read from the repository."""

    id: str
    kind: str
    hostname: str
    pid: int
    created: datetime
    refreshed: datetime
    command: str = ""
    #: Why the object could not be read as a lock ("" for a valid lock).  An unreadable lock
    #: counts as an exclusive lock refreshed when the object was last written, so it blocks
    #: like a lock for ``stale_after`` and then turns stale; ``vmkeep unlock`` reports it.
    problem: str = ""
    #: A name two holders cannot share, whatever their kinds (``""``: none): a second request
    #: with the same ``mutex`` conflicts with this lock while it lives (see :func:`conflicts`).
    mutex: str = ""

    @property
    def key(self) -> str:
        return f"{LOCK_PREFIX}/{self.id}"

    def stale_at(self, stale_after: timedelta = DEFAULT_STALE_AFTER) -> datetime:
        """When the lock turns stale unless refreshed (a lock whose owner is alive on this host
        never does, see :meth:`is_stale`)."""
        return self.refreshed + stale_after

    def is_stale(self, stale_after: timedelta = DEFAULT_STALE_AFTER) -> bool:
        if clock.now() < self.stale_at(stale_after):
            return False
        return not (self.hostname == socket.gethostname() and pid_alive(self.pid))

    def age(self) -> timedelta:
        """Time since the lock was last refreshed (for an unreadable one: last written)."""
        return clock.now() - self.refreshed

    def owner_gone(self) -> bool:
        """Taken on this host by a process that no longer exists (a killed run).  Not stale
        by that alone: another PID namespace under the same host name (a container) could
        hold it; it turns stale ``stale_after`` after its last refresh."""
        return not self.problem and self.hostname == socket.gethostname() and not pid_alive(
            self.pid)

    def describe(self) -> str:
        if self.problem:
            return (
                f"unreadable lock {self.id[:8]} ({self.problem}), last written "
                f"{_age_text(self.age())} ago"
            )
        return (
            f"{self.kind} lock {self.id[:8]} held by pid {self.pid} on {self.hostname} "
            f"since {self.created:%Y-%m-%d %H:%M:%S} UTC"
            + (f" ({self.command})" if self.command else "")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LOCK_FORMAT,
            "version": 1,
            "kind": self.kind,
            "hostname": self.hostname,
            "pid": self.pid,
            "created": self.created.isoformat(),
            "refreshed": self.refreshed.isoformat(),
            "command": self.command,
            **({"mutex": self.mutex} if self.mutex else {}),
        }

    @classmethod
    def decode(cls, lock_id: str, data: bytes) -> LockInfo:
        try:
            obj = json.loads(data)
            if obj.get("format") != LOCK_FORMAT or obj.get("kind") not in KINDS:
                raise ValueError("not a vmkeep lock")
            return cls(
                lock_id,
                obj["kind"],
                str(obj["hostname"]),
                int(obj["pid"]),
                datetime.fromisoformat(obj["created"]),
                datetime.fromisoformat(obj["refreshed"]),
                str(obj.get("command", "")),
                mutex=str(obj.get("mutex") or ""),
            )
        except (ValueError, KeyError, TypeError) as exc:
            from vmkeep.storage.errors import FormatError

            raise FormatError(f"{LOCK_PREFIX}/{lock_id}", f"bad lock: {exc}") from None


def list_locks(backend: Backend) -> list[LockInfo]:
    """Every lock.  A lock that vanished while listing is skipped.  An object that is not a
    valid lock (garbage, truncated, failing authentication) is reported as an exclusive lock of
    unknown owner with ``problem`` set, refreshed when the object was last written: it blocks
    for the normal staleness period, like a lock whose owner died, then turns stale (never
    forever).  Without a modification time (a target that does not report one) it is stale at
    once."""
    found = []
    for key, _size, mtime in backend.list_times(LOCK_PREFIX):
        lock_id = key.rsplit("/", 1)[-1]
        try:
            found.append(LockInfo.decode(lock_id, backend.get(key)))
        except ObjectNotFound:
            continue
        except StorageError as exc:
            log.warning("unreadable lock %s: %s", key, exc.get_message())
            tz = clock.now().tzinfo
            written = datetime.fromtimestamp(mtime if mtime is not None else 0, tz)
            reason = exc.get_message()
            found.append(
                LockInfo(lock_id, EXCLUSIVE, "?", 0, written, written, "", reason[:200])
            )
    return found


def _age_text(age: timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def conflicts(kind: str, other: LockInfo, mutex: str = "") -> bool:
    """Whether a ``kind`` request (with ``mutex``) conflicts with ``other`` (see the module
    docstring)."""
    if kind == EXCLUSIVE or other.kind == EXCLUSIVE:
        return True
    if mutex and other.mutex == mutex:
        return True
    return kind == PRUNE and other.kind == PRUNE


def live_leases(
    backend: Backend,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    exclude: frozenset[str] = frozenset(),
) -> list[LockInfo]:
    """The leases (``shared``, ``read``) that are not stale, except those with ids in ``exclude``.
    An unreadable lock object counts as a lease created at the epoch (it holds everything)."""
    out = []
    epoch = datetime.fromtimestamp(0, clock.now().tzinfo)
    for info in list_locks(backend):
        if info.id in exclude or info.is_stale(stale_after):
            continue
        if info.problem:  # unreadable: it may be anybody's lease, taken at any time
            out.append(dataclasses.replace(info, created=epoch))
        elif info.kind in LEASES:
            out.append(info)
    return out


class Lock:
    """A held lock; see the module docstring.  Use :func:`acquire` to get one."""

    def __init__(
        self,
        backend: Backend,
        info: LockInfo,
        refresh: float,
        stale_after: timedelta,
        release_wait: float = RELEASE_WAIT,
    ) -> None:
        self.backend = backend
        self.info = info
        self.stale_after = stale_after
        self.release_wait = release_wait
        self.lost = False
        self.released = False
        self._abandoned = False  # release stopped waiting for this lock's refresh thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if refresh > 0:
            self._thread = threading.Thread(
                target=self._refresher, args=(refresh,), name="vmkeep-lock", daemon=True
            )
        # the process's exit releases a lock nobody released (see the module docstring); the
        # strong reference in _UNRELEASED keeps that to the exit (never a garbage collection)
        _UNRELEASED.add(self)
        self._at_exit = weakref.finalize(
            self, _release_at_exit, backend, info.key, self._stop, self._thread, release_wait
        )
        self._at_exit.atexit = True
        if self._thread is not None:
            self._thread.start()

    @property
    def kind(self) -> str:
        return self.info.kind

    def _refresher(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.refresh()
            except StorageError as exc:  # transient: try again next round
                log.warning("could not refresh %s: %s", self.info.key, exc)
        if self._abandoned:
            # release gave up waiting for this refresh (LockReleaseHung) and deleted the object;
            # the stuck write may have re-created it since: delete it again
            with contextlib.suppress(StorageError):
                self.backend.delete(self.info.key)

    def refresh(self) -> None:
        """Rewrite the lock with a new ``refreshed`` time; marks it lost if it vanished."""
        if not self.backend.exists(self.info.key):
            self.lost = True
            log.error("%s vanished: it was removed as stale", self.info.key)
            self._stop.set()
            return
        info = LockInfo(**{**self.info.__dict__, "refreshed": clock.now()})
        self.backend.put(info.key, json.dumps(info.to_json()).encode())
        self.info = info  # only once stored: ensure() judges by the last stored refresh

    def ensure(self) -> None:
        """Raise :class:`LockLost` unless the lock is still held, and :class:`LeaseExpired` when
        it was not refreshed for half of ``stale_after`` (call before committing)."""
        if self.lost or not self.backend.exists(self.info.key):
            self.lost = True
            raise LockLost(self.info.key)
        age = clock.now() - self.info.refreshed
        if age >= self.stale_after / 2:
            self.lost = True
            raise LeaseExpired(self.info.key, f"{int(age.total_seconds())} s")

    def release(self) -> None:
        """Stop the refresh thread, wait for it (a refresh in flight would re-create the object
        after the deletion), then delete the lock object.  Raises :class:`LockReleaseHung` when
        the thread did not stop within ``release_wait`` seconds (the object is deleted anyway).
        Idempotent once a release finished (a release that hung is tried again)."""
        if self.released and not self._abandoned:
            return
        self.released = True
        self._at_exit.detach()
        _UNRELEASED.discard(self)
        self._stop.set()
        hung = False
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.release_wait)
            hung = self._abandoned = thread.is_alive()  # set before the deletion below
        with contextlib.suppress(StorageError):
            self.backend.delete(self.info.key)
        if hung:
            raise LockReleaseHung(self.info.key, f"{self.release_wait:g} s")

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._release_after(exc_type is not None)

    def _release_after(self, failed: bool) -> None:
        """Release; when the locked work already failed, a hung release is logged instead of
        raised, so the work's own error (and exit code) is the one reported."""
        try:
            self.release()
        except LockReleaseHung as hung:
            if not failed:
                raise
            log.error("%s", hung.get_message())


def acquire(
    backend: Backend,
    kind: str,
    *,
    wait: float | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    refresh: float | None = None,
    command: str = "",
    release_wait: float = RELEASE_WAIT,
    mutex: str = "",
) -> Lock:
    """Take a ``shared`` or ``exclusive`` lock, retrying for ``wait`` seconds (default
    ``VMKEEP_LOCK_WAIT``, 0).  Raises :class:`RepositoryLocked` naming the holder.
    ``release_wait`` bounds how long :meth:`Lock.release` waits for a refresh in flight.
    ``mutex``: no other live lock with the same mutex may be held at the same time (two racing
    requests may both back off and retry, never both win); the retry delays are jittered so
    that two such requests do not collide again and again."""
    if kind not in KINDS:
        raise ValueError(f"lock kind must be one of {', '.join(KINDS)}, not {kind!r}")
    wait = default_wait(kind) if wait is None else wait
    if refresh is None:
        refresh = _env_seconds("VMKEEP_LOCK_REFRESH", stale_after.total_seconds() / 6)
    deadline = time.monotonic() + wait
    delay = 0.2
    command = command or " ".join(os.path.basename(a) for a in sys.argv[:3])
    while True:
        won, info = _try_acquire(backend, kind, stale_after, command, mutex)
        if won:
            try:
                return Lock(backend, info, refresh, stale_after, release_wait)
            except BaseException:  # e.g. a stop signal before the caller holds the Lock
                _forget(backend, info.key)
                raise
        if time.monotonic() >= deadline:
            raise RepositoryLocked(backend.location, info.describe())
        pause = delay * (0.5 + secrets.randbelow(1000) / 1000)  # jitter: racers drift apart
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


def _try_acquire(
    backend: Backend, kind: str, stale_after: timedelta, command: str, mutex: str = ""
) -> tuple[bool, LockInfo]:
    """One attempt: ``(True, our lock)`` on success, else ``(False, the conflicting holder)``."""
    now = clock.now()
    mine = LockInfo(
        secrets.token_hex(16), kind, socket.gethostname(), os.getpid(), now, now, command,
        mutex=mutex,
    )
    holder = _first_conflict(backend, kind, stale_after, mine.id, mutex)
    if holder is not None:
        return False, holder
    try:
        backend.put(mine.key, json.dumps(mine.to_json()).encode())
        holder = _first_conflict(backend, kind, stale_after, mine.id, mutex)
    except BaseException:  # a stop signal (Terminated) or an error before the lock is ours
        _forget(backend, mine.key)
        raise
    if holder is not None:
        backend.delete(mine.key)
        return False, holder
    return True, mine


#: Locks not yet released (their exit callbacks fire only when the process exits).
_UNRELEASED: set[Lock] = set()


def unreleased() -> frozenset[Lock]:
    """The locks this process holds now (for :func:`release_since`)."""
    return frozenset(_UNRELEASED)


def release_since(before: frozenset[Lock]) -> None:
    """Release the locks taken since ``before`` (:func:`unreleased`) that are still held — a
    command's reader leases, which its repository objects would give back only at the
    interpreter's exit, when some targets can no longer be reached (S3's client refuses new
    work once ``concurrent.futures`` has shut down): the CLI calls it as a command ends.
    Best effort: a release that fails is logged, the lock turns stale."""
    for lock in list(_UNRELEASED - before):
        try:
            lock.release()
        except StorageError as exc:
            log.warning("could not release %s: %s", lock.info.key, exc.get_message())


def _release_at_exit(
    backend: Backend,
    key: str,
    stop: threading.Event,
    thread: threading.Thread | None,
    wait: float,
) -> None:
    """A :class:`Lock` still held when the process exits: stop its refresh thread, wait for a
    refresh in flight (bounded), delete the object (best effort)."""
    stop.set()
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout=wait)
    log.debug("releasing %s at exit", key)
    with contextlib.suppress(Exception):  # the process is ending: whatever the backend says
        backend.delete(key)


def _forget(backend: Backend, key: str) -> None:
    """Delete a lock object this process wrote but never handed out (best effort)."""
    with contextlib.suppress(StorageError):
        backend.delete(key)


def _first_conflict(
    backend: Backend, kind: str, stale_after: timedelta, own_id: str, mutex: str = ""
) -> LockInfo | None:
    for other in list_locks(backend):
        if other.id == own_id or not conflicts(kind, other, mutex):
            continue
        if other.is_stale(stale_after):
            log.warning("ignoring stale %s (remove it with `vmkeep unlock`)", other.describe())
            continue
        return other
    return None


def remove_stale(
    backend: Backend, stale_after: timedelta = DEFAULT_STALE_AFTER, *, remove_all: bool = False
) -> list[LockInfo]:
    """Delete stale locks (see the module docstring) and objects under ``locks/`` that are not
    valid locks (no vmkeep process holds those) — every lock with ``remove_all`` (restic's
    ``unlock --remove-all``: the administrator knows no vmkeep process is running); returns
    what was removed."""
    removed = []
    for info in list_locks(backend):
        if remove_all or info.problem or info.is_stale(stale_after):
            backend.delete(info.key)
            removed.append(info)
    return removed


@contextlib.contextmanager
def locked(backend: Backend, kind: str, **kw: Any) -> Iterator[Lock]:
    lock = acquire(backend, kind, **kw)
    try:
        yield lock
    except BaseException:
        lock._release_after(True)
        raise
    lock.release()
