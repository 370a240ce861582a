"""The steps of a VM image backup: one step per VM action or per disk (a Prefect task each
when the job runs under :class:`~vmkeep.runtime.prefect_runtime.PrefectRuntime`).

Every step takes a live :class:`~vmkeep.vsphere.connection.Session` and plain data; the work is
done by ``vmkeep.vsphere`` and ``vmkeep.storage``.  Retries apply only to transient errors
(dropped connections, expired sessions); snapshot creation is idempotent per run id, so a retried
step never stacks snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmkeep.runtime.base import RetryPolicy, step_def
from vmkeep.storage.disk_backup import DiskResult, backup_disk
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import cbt, guestops, snapshots, transports, vmconfig
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import QuiesceFailed, VSphereError
from vmkeep.vsphere.inventory import DiskInfo, VMInfo, find_vm, list_vms

log = logging.getLogger(__name__)


@dataclass
class TakenSnapshot:
    handle: snapshots.SnapshotHandle
    consistency: str  # "application" (quiesced) or "crash"
    warnings: list[str] = field(default_factory=list)


@dataclass
class MountedDisk:
    disk: DiskInfo
    plan: cbt.DiskPlan
    reader: transports.DiskReader
    index: int
    cbt_enabled: bool


@step_def("find-vm")
def find_vm_task(session: Session, vm: str, enable_cbt: bool = False) -> VMInfo:
    """The VM by instanceUuid (preferred: survives renames and vMotion) or by unique name."""
    from vmkeep.vsphere.errors import NotFound

    try:
        info = find_vm(session, vm)
    except NotFound:
        matches = [v for v in list_vms(session) if v.name == vm]
        if len(matches) != 1:
            raise NotFound(f"VM {vm!r}" + (" (name is ambiguous)" if matches else "")) from None
        info = matches[0]
    if enable_cbt and not info.template and cbt.enable_cbt(session, info.ref):
        log.info("enabled CBT on %s", info.name)
        info = find_vm(session, info.instance_uuid)
    return info


@step_def("guest-script")
def guest_script(
    session: Session, vm: VMInfo, creds: Credentials, command: str, timeout: float = 600.0
) -> int:
    """Run a pre-freeze/post-thaw command in the guest (guest operations); returns exit code."""
    program, _, arguments = command.partition(" ")
    result = guestops.run_program(
        session, vm.ref, creds, program, arguments, timeout=timeout, check=True
    )
    return result.exit_code


@step_def("snapshot")
def take_snapshot(
    session: Session, vm: VMInfo, run_id: str, quiesce: bool, policy: str
) -> TakenSnapshot:
    """Snapshot the VM; on a quiesce failure apply ``policy`` (``fail`` or ``crash-consistent``)."""
    if not quiesce:
        handle = snapshots.create_snapshot(session, vm.ref, run_id, quiesce=False)
        return TakenSnapshot(handle, "crash")
    try:
        return TakenSnapshot(
            snapshots.create_snapshot(session, vm.ref, run_id, quiesce=True), "application"
        )
    except QuiesceFailed as exc:
        if policy != "crash-consistent":
            raise
        warning = f"quiescing failed ({exc.get_message()}); took a crash-consistent snapshot"
        log.warning("%s: %s", vm.name, warning)
        handle = snapshots.create_snapshot(session, vm.ref, run_id, quiesce=False)
        return TakenSnapshot(handle, "crash", [warning])


@step_def("mount-disks")
def mount_disks(
    session: Session,
    vm: VMInfo,
    taken: TakenSnapshot | None,
    previous: RestorePoint | None,
    transport: transports.Transport,
    datastore_mounts: dict[str, str] | None,
) -> tuple[list[MountedDisk], list[str]]:
    """Plan each snapshot disk (cbt/scan/full, never a silent incremental) and open it.

    ``taken`` is None for templates: they never run, so their disks are read as they are
    (``full`` the first time, ``scan`` afterwards; CBT needs a snapshot).
    """
    warnings: list[str] = []
    mounted: list[MountedDisk] = []
    prev_disks = {int(d.extra.get("key", -1)): d for d in previous.disks} if previous else {}
    if taken is not None:
        source = cbt.snapshot_disks(session, taken.handle.ref)
    else:
        source = {d.key: d for d in vm.disks}
    for disk in sorted(source.values(), key=lambda d: d.key):
        index = len(mounted)
        if disk.independent:
            warnings.append(
                f"disk {disk.key} ({disk.label}) is independent: not in snapshots, skipped"
            )
            continue
        prev = prev_disks.get(disk.key)
        state = None
        if prev is not None:
            state = cbt.DiskState(
                prev.extra.get("change_id"),
                int(prev.extra.get("capacity", prev.size)),
                str(prev.extra.get("file_base", "")),
                bool(prev.extra.get("cbt_enabled")),
                prev.extra.get("uuid"),
            )
        if taken is None:
            plan = cbt.DiskPlan(
                "full" if state is None else "scan", "template: read without a snapshot", None
            )
        else:
            plan = cbt.plan_disk(
                session, vm.ref, taken.handle.ref, disk, state, vm_cbt_enabled=vm.cbt_enabled
            )
        if prev is None and previous is not None:
            plan = cbt.DiskPlan("full", "new disk since the previous restore point", plan.areas)
        reader = transports.open_disk(
            session,
            disk,
            transport,
            datacenter=vm.datacenter,
            datastore_mounts=datastore_mounts,
        )
        mounted.append(MountedDisk(disk, plan, reader, index, vm.cbt_enabled))
    return mounted, warnings


@step_def("back-up-vm-disk")
def back_up_vm_disk(
    repo: Repository,
    mounted: MountedDisk,
    previous: RestorePoint | None,
    progress: Callable[[int], None] | None = None,
) -> DiskResult:
    """Chunk, compress, dedupe and write one snapshot disk (packs and index durable on return)."""
    disk, plan = mounted.disk, mounted.plan
    parent = None
    if previous is not None:
        for d in previous.disks:
            if int(d.extra.get("key", -1)) == disk.key:
                parent = previous.chunks[d.index]
    changed = plan.areas if plan.mode == "cbt" else None
    allocated = plan.areas if plan.mode == "full" else None
    result = backup_disk(
        repo,
        mounted.reader,
        disk.capacity,
        index=mounted.index,
        name=disk.label,
        parent=parent if plan.mode != "full" else None,
        changed=changed,
        allocated=allocated,
        reason=plan.reason,
        progress=progress,
        extra={
            "key": disk.key,
            "capacity": disk.capacity,
            "file_name": disk.file_name,
            "file_base": cbt.DiskState.of(disk, True).file_name,
            "datastore": disk.datastore,
            "thin": disk.thin,
            "change_id": disk.change_id,
            "cbt_enabled": mounted.cbt_enabled,
            "uuid": disk.uuid,
            "controller_key": disk.controller_key,
            "unit_number": disk.unit_number,
        },
    )
    result.info.mode = plan.mode
    return result


@step_def("capture-vm-config")
def capture_vm_config(session: Session, vm: VMInfo) -> dict[str, Any]:
    """The configuration needed to recreate the VM (hardware, disks, networks, .vmx)."""
    try:
        return vmconfig.capture_config(session, vm.ref)
    except VSphereError as exc:
        log.warning("could not capture the full configuration of %s: %s", vm.name, exc)
        return vmconfig.capture_config(session, vm.ref, include_vmx=False)


@step_def("release-snapshot", RetryPolicy(retries=3, delay_s=10.0))
def release_snapshot(session: Session, vm: VMInfo, taken: TakenSnapshot) -> bool:
    """Remove the run's snapshot (consolidating if needed); True when it is gone."""
    snapshots.remove_snapshot(session, vm.ref, taken.handle.ref, taken.handle.name)
    return True
