"""The licence gate: the one place a backup is allowed or refused, and the one place usage is read.

:func:`authorize` is called (through the ``licence-check`` task, :mod:`vmkeep.tasks.license_check`)
by every backup path — ``backup vm``, ``backup-vms``, ``backup files``, ``backup image``, staged
and LAN-free runs alike — before any snapshot is taken or any data is read.  Under the ledger's
lock it

1. counts what is protected inside :data:`~vmkeep.licensing.usage.USAGE_WINDOW`: the
   installation's ledger (:mod:`vmkeep.licensing.ledger`) united with the catalog of the
   repository written to, by workload identity (:mod:`vmkeep.licensing.identity`);
2. decides with :func:`vmkeep.licensing.check.check_licence` (licence, or the community tier);
3. when allowed, records the run's workloads in the ledger before returning, so a concurrent
   check sees them.

:func:`usage_report` is the read side (``vmkeep license status``, the ``licence-report`` flow):
the same ledger and any catalogs, never refusing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from vmkeep import clock
from vmkeep.licensing.check import LicenceDecision, check_licence, licence_status
from vmkeep.licensing.identity import file_source_id, image_id, machine_id, vm_id
from vmkeep.licensing.ledger import Ledger
from vmkeep.licensing.model import Usage
from vmkeep.licensing.store import load_state
from vmkeep.licensing.usage import USAGE_WINDOW, ProtectedItem, usage_from_items

ItemLike = ProtectedItem | Mapping[str, Any]


def _items(raw: Iterable[ItemLike]) -> list[ProtectedItem]:
    return [i if isinstance(i, ProtectedItem) else ProtectedItem.from_dict(i) for i in raw]


# -- what a run protects -----------------------------------------------------------------------
def vm_item(host: str, name: str, uuid: str | None, now: datetime,
            remote_device: str | None = None) -> ProtectedItem:
    """A VM image backup read through ESX host ``host`` (by instanceUuid)."""
    return ProtectedItem("vm", name, now, host=host or "(unknown host)", vm_uuid=uuid,
                         remote_device=remote_device, workload=vm_id(name, uuid))


def files_item(source: str, now: datetime, label: str | None = None) -> ProtectedItem:
    """A file backup of ``source``: counted by the machine it reads (not by ``label``)."""
    ident = file_source_id(source)
    return ProtectedItem("files", label or ident.removeprefix("name:"), now, workload=ident)


def client_item(name: str, now: datetime) -> ProtectedItem:
    """A named file client (planning and tests; backups use :func:`files_item`)."""
    return ProtectedItem("files", name, now, workload=machine_id(name))


def image_item(path: str, now: datetime, label: str | None = None) -> ProtectedItem:
    """A ``backup image`` of the disk image at ``path``: one guest seat per image identity."""
    return ProtectedItem("image", label or path, now, workload=image_id(path))


# -- deciding ----------------------------------------------------------------------------------
def authorize(
    run: Sequence[ProtectedItem],
    catalog: Iterable[ItemLike] = (),
    *,
    operation: str = "backup",
    licence_file: str | None = None,
    ledger: Ledger | None = None,
    now: datetime | None = None,
    window: timedelta = USAGE_WINDOW,
    tape_library: str | None = None,
    tape_slots: int = 0,
) -> LicenceDecision:
    """Decide for a run protecting ``run`` into a repository whose catalog is ``catalog``;
    records ``run`` in the ledger when allowed.  Never raises for a refusal (see
    :meth:`LicenceDecision.raise_if_refused`); raises :class:`~vmkeep.licensing.ledger.
    LedgerError` when usage cannot be counted.
    """
    at = now or clock.now()
    since = at - window
    state = load_state(licence_file)
    known = _items(catalog)
    adding = usage_from_items(run)
    if tape_library:
        adding = adding.union(Usage(tape_libraries={machine_id(tape_library): tape_slots}))

    def decide(recorded: list[ProtectedItem]) -> tuple[LicenceDecision, list[ProtectedItem]]:
        current = usage_from_items([*recorded, *known], since)
        decision = check_licence(state.for_check, current, adding, at, operation)
        return decision, list(run) if decision.allowed and operation == "backup" else []

    return (ledger or Ledger()).transact(decide)


def usage_report(
    catalog: Iterable[ItemLike] = (),
    *,
    licence_file: str | None = None,
    ledger: Ledger | None = None,
    now: datetime | None = None,
    window: timedelta | None = USAGE_WINDOW,
    include_ledger: bool = True,
) -> LicenceDecision:
    """The licence (or community tier) against everything counted: the ledger and ``catalog``."""
    at = now or clock.now()
    since = at - window if window else None
    items = _items(catalog)
    if include_ledger:
        items += (ledger or Ledger()).read()
    return licence_status(load_state(licence_file).for_check, usage_from_items(items, since), at)
