"""Concurrency limits for snapshots: per ESX host and per datastore.

Too many snapshots at once stun hosts and fill datastores (failure case 13), so every VM backup
holds one slot of ``host:<name>`` and one of ``datastore:<name>`` for each datastore its disks
live on, from before its snapshot until after its release.

The runtime holds the slots: Prefect global concurrency limits (``vmkeep-host-<name>``,
``vmkeep-datastore-<name>``, created on first use with the configured default and editable in the
Prefect UI) under Prefect, process-local semaphores with the same limits otherwise.
:data:`PEAKS` records the highest concurrency seen per slot in this process (reports and tests
read it).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

from vmkeep.runtime.base import Runtime
from vmkeep.runtime.local import PEAKS

DEFAULT_LIMITS = {"host": 4, "datastore": 2}
__all__ = ["DEFAULT_LIMITS", "PEAKS", "hold", "slot_name", "slots_for"]


def slot_name(kind: str, name: str) -> str:
    return f"vmkeep-{kind}-{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}"


def slots_for(
    host: str | None, datastores: Sequence[str], limits: dict[str, int] | None = None
) -> list[tuple[str, int]]:
    """The ``(slot name, limit)`` pairs a VM on ``host`` with disks on ``datastores`` holds."""
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    slots = [(slot_name("datastore", ds), limits["datastore"]) for ds in sorted(set(datastores))]
    if host:
        slots.insert(0, (slot_name("host", host), limits["host"]))
    return slots


@contextlib.contextmanager
def hold(
    rt: Runtime,
    host: str | None,
    datastores: Sequence[str],
    limits: dict[str, int] | None = None,
) -> Iterator[list[str]]:
    """Hold one slot per host and datastore for the block; yields the slot names."""
    slots = slots_for(host, datastores, limits)
    with rt.slots(slots):
        yield [n for n, _ in slots]
