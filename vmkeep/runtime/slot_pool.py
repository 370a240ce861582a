"""Global concurrency slots held by one run and lent to its child jobs (no Prefect here).

A ``backup-vms`` run backs up many VMs, each holding one slot per ESX host and per datastore
while its snapshot exists.  Asking the orchestrator's server for every VM's slots costs two
round trips per VM (and, on a busy SQLite server, seconds); a :class:`SlotPool` asks once and
keeps a slot its run got while the run's *own* later children are expected to need it:

* :meth:`SlotPool.expect` — the parent announces, per child (``key``), the slot names the child
  will take (its VM's host and datastores);
* :meth:`SlotPool.hold` — a child takes one slot of each name: idle ones the pool holds, and
  the rest from the server in one call (:class:`SlotServer`: one lease for them, all or none);
* when a child gives a slot back, the pool keeps it idle if another child still expects that
  name, otherwise returns it to the server at once; :meth:`SlotPool.done` drops a finished
  child's unused expectations; :meth:`SlotPool.close` returns everything (the run's end).

The limit itself is the server's: the pool never lends more slots than it got from the server,
so at most ``limit`` snapshots exist per host/datastore across runs, workers and machines.
A child never holds a slot while it waits: turned away by the server, it gives back what it
took and the pool returns every idle slot before waiting, so a pool never sits on a slot another
run waits for while its own children wait too (no wait cycle between runs).  Leases are
renewed every ``renew_every_s`` while held; if the process dies they expire and the server frees
the slots.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Protocol

log = logging.getLogger("vmkeep.runtime.slots")


class Locked(Exception):
    """The server has no free slot for one of the names now; ask again in ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"no free slot; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


class SlotServer(Protocol):
    """Where slots come from (Prefect global concurrency limits under Prefect)."""

    def acquire(self, names: list[str]) -> str:
        """One slot of each of ``names``, all or none, as one lease id; raises :class:`Locked`
        when one of them has no free slot."""
        ...

    def release(self, lease: str) -> None: ...

    def renew(self, leases: list[str]) -> None: ...

    def close(self) -> None: ...


class SlotPool:
    """See the module docstring.  Thread-safe: children run on their own threads.

    The unit the pool keeps is a lease (one slot of each of a few names, as the server granted
    it); a child takes idle leases whose names it needs and asks the server for the rest in
    one call."""

    def __init__(self, server: SlotServer, renew_every_s: float = 60.0) -> None:
        self.server = server
        self.renew_every_s = renew_every_s
        self._cond = threading.Condition()
        self._idle: dict[str, frozenset[str]] = {}  # lease id -> its names, idle in the pool
        self._busy: dict[str, frozenset[str]] = {}  # lease id -> its names, lent to a child
        self._wanted: dict[str, set[str]] = defaultdict(set)  # name -> keys still expecting it
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        #: server calls that acquired slots, per name (reports and tests read it)
        self.server_acquisitions: Counter[str] = Counter()

    def expect(self, key: str, names: Iterable[str]) -> None:
        """Child ``key`` will take one slot of each of ``names``."""
        with self._cond:
            for name in names:
                self._wanted[name].add(key)

    def done(self, key: str) -> None:
        """Child ``key`` has ended: forget what it did not take; return slots nobody expects."""
        with self._cond:
            for keys in self._wanted.values():
                keys.discard(key)
            spare = [lease for lease, names in self._idle.items() if not self._is_wanted(names)]
            for lease in spare:
                del self._idle[lease]
        self._release_all(spare)

    @contextlib.contextmanager
    def hold(self, names: Iterable[str], key: str | None = None) -> Iterator[None]:
        """Hold one slot of each name for the block (``key``: the child's, see :meth:`expect`)."""
        leases = self._take(frozenset(names), key)
        try:
            yield
        finally:
            self._give_back(leases)

    def close(self) -> None:
        """Return every slot to the server (the run is over) and stop renewing."""
        self._stop.set()
        with self._cond:
            leases = [*self._idle, *self._busy]
            self._idle.clear()
            self._busy.clear()
            self._wanted.clear()
        self._release_all(leases)
        self.server.close()

    # -- internals -----------------------------------------------------------------------

    def _is_wanted(self, names: frozenset[str]) -> bool:
        return any(self._wanted[name] for name in names)

    def _take(self, needed: frozenset[str], key: str | None) -> list[str]:
        """Idle leases covering part of ``needed`` plus one new lease for the rest.  A child
        never holds a slot while it waits: turned away, it gives everything back first."""
        while True:
            with self._cond:
                taken, missing = [], set(needed)
                for lease, names in list(self._idle.items()):
                    if names <= missing:
                        taken.append(lease)
                        missing -= names
                        self._busy[lease] = self._idle.pop(lease)
            if not missing:
                return self._lent(taken, needed, key)
            try:
                lease = self.server.acquire(sorted(missing))
            except Locked as exc:
                with self._cond:  # wait holding nothing: no wait cycle with other runs
                    for held in taken:
                        self._idle[held] = self._busy.pop(held)
                    spare = list(self._idle)
                    self._idle.clear()
                self._release_all(spare)
                with self._cond:
                    self._cond.wait_for(
                        lambda: any(n <= needed for n in self._idle.values()),
                        timeout=exc.retry_after,
                    )
                continue
            with self._cond:
                self._busy[lease] = frozenset(missing)
                self.server_acquisitions.update(missing)
                self._start_renewer()
            return self._lent([*taken, lease], needed, key)

    def _lent(self, leases: list[str], needed: frozenset[str], key: str | None) -> list[str]:
        if key is not None:
            with self._cond:
                for name in needed:
                    self._wanted[name].discard(key)
        return leases

    def _give_back(self, leases: list[str]) -> None:
        spare = []
        with self._cond:
            for lease in leases:
                names = self._busy.pop(lease, None)
                if names is None:  # closed meanwhile
                    continue
                if self._is_wanted(names) and not self._stop.is_set():
                    self._idle[lease] = names
                else:
                    spare.append(lease)
            self._cond.notify_all()
        self._release_all(spare)

    def _release_all(self, leases: list[str]) -> None:
        for lease in leases:
            try:
                self.server.release(lease)
            except Exception as exc:  # the lease expires on its own; say so
                log.warning("could not return slot lease %s (%s); it expires", lease, exc)

    def _start_renewer(self) -> None:
        if self._renewer is not None:
            return

        def renew() -> None:
            while not self._stop.wait(self.renew_every_s):
                with self._cond:
                    leases = [*self._idle, *self._busy]
                if leases:
                    try:
                        self.server.renew(leases)
                    except Exception as exc:
                        log.warning("could not renew concurrency slot leases (%s)", exc)

        self._renewer = threading.Thread(target=renew, name="vmkeep-slot-leases", daemon=True)
        self._renewer.start()
