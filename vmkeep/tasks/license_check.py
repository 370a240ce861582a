"""The licence decision before any backup or tape work: :func:`decide`, the one place it is made.

:func:`decide` gathers what a run will protect (VMs, file sources, disk images, a data mover's
remote device, a tape library's slots) and asks :func:`vmkeep.licensing.gate.authorize` — ledger +
the repository's catalog, by workload identity, licence or community tier.  Jobs take it as their
``licence-check`` step through :mod:`vmkeep.jobs.licence`, which publishes the report through the
runtime (artifacts under Prefect, the terminal/JSON in-process) and raises
:class:`~vmkeep.licensing.errors.LicenceRefused` (exit code 17) *before* any snapshot, read or
cartridge move; the message names each missing SKU and how many.

Report keys (artifacts under Prefect): a markdown report ``vmkeep-licence-report``, a table
``vmkeep-licence-usage`` and, at >= 90 % use, over-use or near expiry, a markdown
``vmkeep-licence-warning``.  Read-only operations (restore, list, check, mount) pass
``operation="restore"`` etc. and are never refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from vmkeep import clock
from vmkeep.licensing.check import LicenceDecision
from vmkeep.licensing.gate import authorize, client_item, files_item, image_item, vm_item
from vmkeep.licensing.usage import PlannedVm, ProtectedItem

REPORT_KEY = "vmkeep-licence-report"
TABLE_KEY = "vmkeep-licence-usage"
WARNING_KEY = "vmkeep-licence-warning"

PlannedVmLike: TypeAlias = PlannedVm | Mapping[str, Any] | Sequence[str]


def _planned_vm(v: PlannedVmLike) -> PlannedVm:
    if isinstance(v, PlannedVm):
        return v
    if isinstance(v, Mapping):
        return PlannedVm(host=str(v["host"]), name=str(v["name"]), uuid=v.get("uuid"))
    parts = list(v)
    if len(parts) not in (2, 3):
        raise ValueError(f"planned VM must be (host, name[, uuid]), got {v!r}")
    return PlannedVm(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def decide(
    *,
    image_vms: Sequence[PlannedVmLike] = (),
    file_sources: Sequence[str] = (),
    file_clients: Sequence[str] = (),
    images: Sequence[str] = (),
    remote_device: str | None = None,
    tape_library: str | None = None,
    tape_slots: int = 0,
    catalog: Iterable[ProtectedItem | Mapping[str, Any]] = (),
    licence_file: str | None = None,
    operation: str = "backup",
) -> LicenceDecision:
    """The decision (and, when allowed, the ledger entry) for a run, without Prefect.

    ``file_sources`` are counted by the machine they read; ``file_clients`` are named machines
    (planning-style input, for tests and tools); ``images`` are disk image paths.
    """
    now = clock.now()
    run: list[ProtectedItem] = []
    for v in image_vms:
        vm = _planned_vm(v)
        run.append(vm_item(vm.host, vm.name, vm.uuid, now, remote_device))
    run += [files_item(s, now) for s in file_sources]
    run += [client_item(c, now) for c in file_clients]
    run += [image_item(p, now) for p in images]
    return authorize(run, catalog, operation=operation, licence_file=licence_file, now=now,
                     tape_library=tape_library, tape_slots=tape_slots)
