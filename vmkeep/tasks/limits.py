"""Concurrency limits for snapshots: per ESX host and per datastore.

Too many snapshots at once stun hosts and fill datastores (failure case 13), so every VM backup
holds one slot of ``host:<name>`` and one of ``datastore:<name>`` for each datastore its disks
live on, from before its snapshot until after its release.

Orchestrated runs use Prefect global concurrency limits (``vmkeep-host-<name>``,
``vmkeep-datastore-<name>``), created on first use with the configured default and editable in
the Prefect UI afterwards, so limits hold across workers and machines.  Direct runs use
process-local semaphores with the same limits.  :data:`PEAKS` records the highest concurrency
seen per slot in this process (reports and tests read it).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence

from vmkeep.tasks.runtime import direct_mode

DEFAULT_LIMITS = {"host": 4, "datastore": 2}
PEAKS: dict[str, int] = defaultdict(int)
_ACTIVE: dict[str, int] = defaultdict(int)
_LOCK = threading.Lock()
_SEMAPHORES: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def slot_name(kind: str, name: str) -> str:
    return f"vmkeep-{kind}-{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}"


def _semaphore(name: str, limit: int) -> threading.BoundedSemaphore:
    """One semaphore per slot and limit (runs asking for another limit get their own)."""
    with _LOCK:
        sem = _SEMAPHORES.get((name, limit))
        if sem is None:
            sem = _SEMAPHORES[(name, limit)] = threading.BoundedSemaphore(limit)
        return sem


def _ensure_prefect_limits(slots: Sequence[tuple[str, int]]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        for name, limit in slots:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=limit)
                    )


@contextlib.contextmanager
def hold(
    host: str | None, datastores: Sequence[str], limits: dict[str, int] | None = None
) -> Iterator[list[str]]:
    """Hold one slot per host and datastore for the block; yields the slot names."""
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    slots = [(slot_name("datastore", ds), limits["datastore"]) for ds in sorted(set(datastores))]
    if host:
        slots.insert(0, (slot_name("host", host), limits["host"]))
    names = [n for n, _ in slots]
    if direct_mode():
        acquired = []
        try:
            for name, limit in slots:
                sem = _semaphore(name, limit)
                sem.acquire()
                acquired.append(sem)
            with _track(names):
                yield names
        finally:
            for sem in reversed(acquired):
                sem.release()
        return
    from prefect.concurrency.sync import concurrency

    _ensure_prefect_limits(slots)
    with concurrency(names, occupy=1), _track(names):
        yield names


@contextlib.contextmanager
def _track(names: Sequence[str]) -> Iterator[None]:
    with _LOCK:
        for name in names:
            _ACTIVE[name] += 1
            PEAKS[name] = max(PEAKS[name], _ACTIVE[name])
    try:
        yield
    finally:
        with _LOCK:
            for name in names:
                _ACTIVE[name] -= 1
