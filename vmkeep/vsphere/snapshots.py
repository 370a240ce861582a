"""Backup snapshots: deterministic names, a machine-readable marker, guaranteed release, sweeping.

Naming contract (stable, other tools rely on it):

* name ``vmkeep-<run id>``; run ids are ``[A-Za-z0-9._-]{1,64}``;
* description's first line ``vmkeep:run=<run id>;created=<ISO-8601 UTC>``.

A snapshot is **vmkeep's** only if both hold (and name and marker agree).  Only vmkeep's
snapshots are ever removed by this module; the run that created one removes it on exit of
:func:`backup_snapshot` (``finally``), and :func:`sweep_snapshots` removes those whose run is no
longer active (a run killed with -9, a failed release).  Nobody else may delete them.

Idempotence: :func:`create_snapshot` first looks for an existing snapshot of the same run on the
VM and reuses it, so a retried task never stacks two snapshots.  Removal is retried
(``remove_attempts``) because ESXi fails it transiently (locked files); a removal vSphere
accepted is waited for as long as it runs (consolidation can take hours) and never issued
twice; afterwards disks are consolidated when ``runtime.consolidationNeeded`` is set.  Quiesce
errors surface as :class:`QuiesceFailed`; the caller applies its policy (fail, or retry with
``quiesce=False``).
Snapshots never include memory.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from vmkeep import clock
from vmkeep.errors import UsageError
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import (
    QuiesceFailed,
    SnapshotFailed,
    SnapshotRemoveFailed,
    TaskFailed,
    TaskTimeout,
    VSphereError,
)
from vmkeep.vsphere.inventory import vm_properties
from vmkeep.vsphere.waiter import wait_for_task

log = logging.getLogger(__name__)

PREFIX = "vmkeep-"
_RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MARKER = re.compile(r"^vmkeep:run=(?P<run>[A-Za-z0-9._-]{1,64});created=(?P<created>[^;\s]+)$")


@dataclass(frozen=True)
class Marker:
    run_id: str
    created: datetime


def snapshot_name(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise UsageError(f"run id {run_id!r} must match [A-Za-z0-9._-]{{1,64}}")
    return PREFIX + run_id


def make_description(run_id: str, created: datetime | None = None) -> str:
    when = (created or clock.now()).isoformat(timespec="seconds")
    snapshot_name(run_id)  # validates
    return f"vmkeep:run={run_id};created={when}\nTaken by vmkeep for a backup; removed by vmkeep."


def parse_marker(name: str, description: str | None) -> Marker | None:
    """The marker of a vmkeep snapshot, or ``None`` if it is not one of ours."""
    first = (description or "").splitlines()[0].strip() if description else ""
    m = _MARKER.match(first)
    if not m or name != PREFIX + m.group("run"):
        return None
    try:
        created = datetime.fromisoformat(m.group("created"))
    except ValueError:
        return None
    if created.tzinfo is None:
        return None
    return Marker(m.group("run"), created)


@dataclass
class SnapshotHandle:
    """A snapshot taken for a run; ``ref`` is the ``vim.vm.Snapshot``."""

    vm: Any = field(repr=False)
    ref: Any = field(repr=False)
    name: str
    run_id: str
    quiesced: bool
    reused: bool = False


@dataclass(frozen=True)
class FoundSnapshot:
    vm: Any = field(repr=False, compare=False)
    ref: Any = field(repr=False, compare=False)
    vm_name: str
    instance_uuid: str
    name: str
    description: str
    create_time: datetime | None


def _walk(tree: Sequence[Any] | None) -> Iterator[Any]:
    for node in tree or []:
        yield node
        yield from _walk(node.childSnapshotList)


def snapshots_of(session: Session, vm: Any) -> list[Any]:
    """The VM's snapshot tree nodes (``vim.vm.SnapshotTree``), flattened."""
    info = session.get(vm, "snapshot")
    return list(_walk(info.rootSnapshotList if info else None))


def _is_quiesce_fault(fault: Any) -> bool:
    from pyVmomi import vim

    if isinstance(fault, vim.fault.ApplicationQuiesceFault | vim.fault.ToolsUnavailable):
        return True
    return "quiesc" in (getattr(fault, "msg", "") or "").lower()


def create_snapshot(
    session: Session, vm: Any, run_id: str, *, quiesce: bool = True, timeout: float = 1800.0
) -> SnapshotHandle:
    """Create (or reuse, same run) the run's snapshot; raises QuiesceFailed / SnapshotFailed."""
    name = snapshot_name(run_id)
    vm_name = session.get(vm, "name")
    for node in snapshots_of(session, vm):
        if parse_marker(node.name, node.description) and node.name == name:
            log.info("reusing snapshot %s of %s", name, vm_name)
            return SnapshotHandle(vm, node.snapshot, name, run_id, bool(node.quiesced), True)
    task = session.call(
        vm.CreateSnapshot_Task, name, make_description(run_id), False, quiesce,
        what=f"CreateSnapshot {name}",
    )
    try:
        ref = wait_for_task(session, task, timeout=timeout, what=f"CreateSnapshot {name}")
    except TaskFailed as exc:
        if quiesce and _is_quiesce_fault(exc.fault):
            raise QuiesceFailed(name, vm_name, exc.args[1]) from None
        raise SnapshotFailed(name, vm_name, exc.args[1]) from None
    log.info("created snapshot %s of %s (quiesce=%s)", name, vm_name, quiesce)
    return SnapshotHandle(vm, ref, name, run_id, quiesce)


def remove_snapshot(
    session: Session,
    vm: Any,
    ref: Any,
    name: str,
    *,
    attempts: int = 3,
    delay: float = 2.0,
    timeout: float = 24 * 3600.0,
    report_every: float = 600.0,
) -> None:
    """Remove one snapshot (children kept), then consolidate if needed.

    A removal vSphere refused or failed (a locked file, another task on the VM) is retried
    ``attempts`` times.  A removal it accepted is waited for as long as it runs — consolidating a
    large delta takes hours on a real host — and never issued again meanwhile (a second one
    would fail with TaskInProgress); every ``report_every`` seconds the wait is logged.  After
    ``timeout`` (default a day) :class:`SnapshotRemoveFailed` says the removal is still running
    in vSphere; the snapshot's marker stays, so a later sweep finds it if it is ever left."""
    vm_name = session.get(vm, "name")
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            task = session.call(ref.RemoveSnapshot_Task, False, True, what=f"Remove {name}")
            wait_for_task(
                session, task, timeout=timeout, what=f"RemoveSnapshot {name}",
                report_every=report_every,
                on_wait=lambda waited: log.info(
                    "snapshot %s of %s: vSphere is still removing it (%.0f min); waiting",
                    name, vm_name, waited / 60),
            )
            break
        except TaskTimeout:
            raise SnapshotRemoveFailed(
                name, vm_name, f"vSphere is still removing it after {timeout / 3600:.1f} h"
            ) from None
        except VSphereError as exc:
            last = exc.get_message()
            if _gone(session, vm, ref):
                break
            log.warning("removing %s of %s failed (attempt %d): %s", name, vm_name, attempt, last)
            if attempt == attempts:
                raise SnapshotRemoveFailed(name, vm_name, last) from None
            time.sleep(delay * attempt)
    consolidate_if_needed(session, vm, timeout=timeout)
    log.info("removed snapshot %s of %s", name, vm_name)


def _gone(session: Session, vm: Any, ref: Any) -> bool:
    try:
        return all(node.snapshot != ref for node in snapshots_of(session, vm))
    except VSphereError:
        return False


def consolidate_if_needed(session: Session, vm: Any, *, timeout: float = 3600.0) -> bool:
    """Run ``ConsolidateVMDisks_Task`` when ``runtime.consolidationNeeded``; True if it ran."""
    if not session.get(vm, "runtime.consolidationNeeded"):
        return False
    task = session.call(vm.ConsolidateVMDisks_Task, what="ConsolidateVMDisks")
    wait_for_task(session, task, timeout=timeout, what="ConsolidateVMDisks")
    return True


@contextlib.contextmanager
def backup_snapshot(
    session: Session, vm: Any, run_id: str, *, quiesce: bool = True, timeout: float = 1800.0
) -> Iterator[SnapshotHandle]:
    """Context manager: snapshot on entry, ALWAYS removed on exit (``finally``).

    If the body raised, a removal failure is logged and attached as a note; the body's error wins.
    """
    handle = create_snapshot(session, vm, run_id, quiesce=quiesce, timeout=timeout)
    body_failed = False
    try:
        yield handle
    except BaseException as exc:
        body_failed = True
        try:
            remove_snapshot(session, vm, handle.ref, handle.name)
        except VSphereError as rm:
            log.error("could not remove snapshot %s: %s (the sweep will)", handle.name, rm)
            exc.add_note(f"snapshot {handle.name} left behind: {rm}")
        raise
    finally:
        if not body_failed:
            remove_snapshot(session, vm, handle.ref, handle.name)


def find_vmkeep_snapshots(session: Session) -> list[tuple[FoundSnapshot, Marker]]:
    """Every vmkeep snapshot on every VM (one inventory call)."""
    found = []
    for vm, props in vm_properties(session, ["name", "config.instanceUuid", "snapshot"]):
        info = props.get("snapshot")
        for node in _walk(info.rootSnapshotList if info else None):
            marker = parse_marker(node.name, node.description)
            if marker is None:
                continue
            found.append((FoundSnapshot(
                vm, node.snapshot, props.get("name", ""), props.get("config.instanceUuid", ""),
                node.name, node.description or "", node.createTime,
            ), marker))
    return found


@dataclass
class SweepReport:
    removed: list[FoundSnapshot] = field(default_factory=list)
    failed: list[tuple[FoundSnapshot, str]] = field(default_factory=list)
    kept: list[FoundSnapshot] = field(default_factory=list)


def sweep_snapshots(
    session: Session, older_than: timedelta, active_runs: Sequence[str] | set[str] = ()
) -> SweepReport:
    """Remove vmkeep snapshots whose run is not active and that are older than ``older_than``.

    Only snapshots carrying both the name prefix and the marker are considered; others are never
    touched.  Failures are collected (not raised) so one stuck VM does not stop the sweep.
    """
    active = set(active_runs)
    cutoff = clock.now() - older_than
    report = SweepReport()
    for snap, marker in find_vmkeep_snapshots(session):
        if marker.run_id in active or marker.created > cutoff:
            report.kept.append(snap)
            continue
        try:
            remove_snapshot(session, snap.vm, snap.ref, snap.name)
            report.removed.append(snap)
        except VSphereError as exc:
            report.failed.append((snap, exc.get_message()))
    return report
