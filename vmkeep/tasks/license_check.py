"""The licence check before any backup or tape work.

:func:`decide` is the one decision for a run; the backup jobs (VM, multi-VM, file, image) take it
as their ``licence-check`` step through :mod:`vmkeep.jobs.licence` (artifacts through the
runtime), before any snapshot or read.  The ``license_check`` task below is the same decision for
the flows not yet rewritten as jobs (tape copy): a thin Prefect wrapper around
:func:`vmkeep.licensing.gate.authorize` — the one licence decision (ledger + the repository's
catalog, by workload identity, licence or community tier) — that publishes the report and raises
:class:`~vmkeep.licensing.errors.LicenceRefused` (exit code 17) *before* the flow takes any snapshot
or reads anything; the message names each missing SKU and how many. In direct mode (no Prefect) it
is the same function without artifacts.

Flows call it with plain data (no pyVmomi objects)::

    license_check(
        image_vms=[{"host": vm.host, "name": vm.name, "uuid": vm.instance_uuid} for vm in vms],
        file_sources=["sftp://user@web1/srv"],   # file flow: the source (URL or local path)
        images=["/images/disk.img"],             # image flow: the disk image path
        remote_device=None,                 # the data mover's name when it moves data LAN-free
        tape_library=None, tape_slots=0,    # tape target: library name and its slot count
        catalog=catalog_items(repository),  # the repository's protected items
    )

Artifacts (only inside a Prefect run): a markdown report ``vmkeep-licence-report``, a table
``vmkeep-licence-usage`` and, at >= 90 % use, over-use or near expiry, a markdown
``vmkeep-licence-warning``.  Read-only flows (restore, list, ls, check, mount) do not call it; if
they do, with ``operation="restore"`` etc., it never refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from vmkeep import clock
from vmkeep.licensing.check import LicenceDecision
from vmkeep.licensing.gate import authorize, client_item, files_item, image_item, vm_item
from vmkeep.licensing.report import render_markdown, render_warning_markdown, table_rows
from vmkeep.licensing.usage import PlannedVm, ProtectedItem
from vmkeep.tasks.runtime import (
    NO_CACHE,
    direct_mode,
    publish_markdown,
    publish_table,
    task,
)

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


def _in_run() -> bool:
    if direct_mode():
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    if not _in_run():
        return logging.getLogger(__name__)
    from prefect.logging import get_run_logger

    return get_run_logger()


def publish(decision: LicenceDecision) -> None:
    """Create the report, table and (when due) warning artifacts; no-op outside a Prefect run."""
    if not _in_run():
        return
    verdict = "refused" if decision.refusal else "allowed"
    publish_markdown(
        REPORT_KEY,
        render_markdown(decision, title=f"vmkeep licence check ({verdict})"),
        f"Licence check: {decision.operation} {verdict}",
    )
    publish_table(TABLE_KEY, table_rows(decision), "Licence use per meter")
    if decision.warnings:
        publish_markdown(WARNING_KEY, render_warning_markdown(decision), "Licence warning")


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


@task(name="licence-check", cache_policy=NO_CACHE, retries=0, log_prints=False)
def license_check(
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
) -> dict[str, Any]:
    """Check the licence for a run; returns the decision as a dict, raises ``LicenceRefused``.

    ``image_vms``: the VMs the run will image, as :class:`PlannedVm`, ``{"host", "name",
    "uuid"}`` mappings or ``(host, name[, uuid])`` tuples.  ``file_sources``: the sources whose
    files it will back up.  ``images``: disk image paths.  ``catalog``: the repository's protected
    items, as a list (Prefect records task parameters; do not pass a one-shot generator).
    """
    decision = decide(
        image_vms=image_vms,
        file_sources=file_sources,
        file_clients=file_clients,
        images=images,
        remote_device=remote_device,
        tape_library=tape_library,
        tape_slots=tape_slots,
        catalog=catalog,
        licence_file=licence_file,
        operation=operation,
    )
    log = _logger()
    publish(decision)
    for warning in decision.warnings:
        log.warning("licence: %s", warning)
    if decision.refusal is not None:
        log.error("%s", decision.refusal.get_message())
        raise decision.refusal
    return decision.as_dict()

