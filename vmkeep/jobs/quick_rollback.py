"""Job: quick rollback — the original VM back to a VM restore point in place, writing only the
blocks that changed since (Veeam's "quick rollback", an incremental restore).

A whole-VM restore copies every allocated byte; after a bad patch, a ransomware hit inside the
guest or a botched upgrade most of the disk is still what the point holds.  Quick rollback asks
vSphere's changed-block tracking which areas of each disk were written *since the point* (the
point's change id, ``QueryChangedDiskAreas`` on the powered-off VM without a snapshot, which
vSphere answers only for powered-off VMs) and rewrites only those areas — and of those only the
slices that differ from the point (:mod:`vmkeep.storage.disk_rollback`).

Where it writes (``spec.rollback_transport``): ``direct`` — into the flat files of the VM's NFS
datastores mounted writable here (``--datastore-mount``; Veeam's Direct NFS), or ``hotadd`` — each
disk attached in turn to the data-mover VM vmkeep runs in (``independent_persistent``, marked and
always detached as the backups' hot-adds are: :func:`vmkeep.vsphere.hotadd.writable_device`),
written through the device the mover's OS sees; any datastore type its host mounts (VMFS, vSAN,
vVols, NFS).  While a disk is attached vSphere will not power the VM on.

Steps: open the point (kind ``vm``) → log in → find the point's VM by its instance UUID →
refuse before anything changes (:class:`~vmkeep.errors.InputError`, exit 14): the VM is gone, a
template, not powered off (a running guest would see its disk change under it; ``power_off_first``
powers it off, hard, after every other check passed), has snapshots
(its disks would be deltas of a chain), a backed-up disk is missing (matched by device key) or
was resized; with ``direct`` every disk's datastore must be NFS and mounted writable here
(:class:`~vmkeep.vsphere.errors.TransportRefused`), with ``hotadd`` the mover must exist and its
host see every disk's datastore (:class:`~vmkeep.vsphere.hotadd.HotaddRefused`) → ``changed areas of
disk <n>`` per disk: CBT's answer, or the whole disk compared when CBT cannot answer (off on the
VM, no change id in the point, the disk replaced since, or the change id no longer valid — a
CBT reset since the point, including the one a previous quick rollback made) → ``reset CBT of
<vm>`` → ``roll back disk <n>`` per disk → ``reset CBT of <vm>`` again → ``power on`` if asked.

Why CBT is reset, twice: the writes go to the disk files past the VM's own ESXi host (through
the NFS mount, or from the mover, whose configuration tracks no changes for a borrowed disk), so
the VM's change tracking never sees them.  An incremental backup whose previous point came from
before the rollback would otherwise ask CBT for changes since then and miss every rolled-back
block.  The first reset (before any write) makes a rollback that dies half-way safe — the next
backup reads the disks whole; the second covers a backup that ran while the rollback wrote.
A rollback that wrote nothing resets nothing.  Running quick rollback again finishes an
interrupted one (the writes are idempotent; it then compares whole disks, since CBT was reset).

Disks of the VM the point does not hold (excluded from the backup, independent, added since)
are left as they are, with a warning.  Nothing is created, renamed or destroyed; tags, NICs and
the configuration are the VM's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from vmkeep.errors import InputError
from vmkeep.jobs.restore_common import byte_progress, open_point, scan_before_restore, vcenter
from vmkeep.jobs.restore_specs import RestoreVmSpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.read_plan import DiskCbtState
from vmkeep.tasks.restore import (
    RollbackTarget,
    power_off,
    power_on,
    reset_change_tracking,
    roll_back_vm_disk,
)
from vmkeep.vsphere import cbt, hotadd, mounted_datastore, vmconfig
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import ChangeTrackingError, NotFound
from vmkeep.vsphere.inventory import VirtualDisk, VMInfo, find_vm

NOT_A_VM = "not a VM backup: quick rollback needs the VM it was taken from"
WHAT = "restore vm --quick-rollback"


@dataclass(frozen=True)
class DiskRollback:
    """One disk to roll back: the point's disk ``index``, the VM's ``disk`` now, and the
    ``areas`` to look at (None: the whole disk) with the ``method`` and ``reason``."""

    index: int
    disk: VirtualDisk
    areas: list[tuple[int, int]] | None
    method: str  # "cbt" | "compare"
    reason: str

    @property
    def bytes_to_check(self) -> int:
        if self.areas is None:
            return self.disk.capacity
        return sum(length for _, length in self.areas)


def quick_rollback(spec: RestoreVmSpec, rt: Runtime) -> dict[str, Any]:
    """Roll the VM of ``spec.point`` back in place (see the module docstring); the summary."""
    started = time.monotonic()
    repository, point = open_point(spec, ("vm",), NOT_A_VM)
    scanned = scan_before_restore(rt, repository, point, spec.yara_rules)
    uuid = point.meta.get("instance_uuid")
    if not isinstance(uuid, str) or not uuid:
        raise InputError(f"{WHAT}: point {point.short_id} does not name its VM's instance UUID")
    transport = spec.rollback_transport
    with vcenter(spec.vcenter) as session:
        try:
            vm = find_vm(session, uuid)
        except NotFound:
            raise InputError(
                f"{WHAT}: the VM of point {point.short_id} (instance UUID {uuid}) is not in this "
                "vCenter; restore it as a new VM (without --quick-rollback)") from None
        target = RollbackTarget(
            transport, vm.name, vm.instance_uuid, rt.run_id, dict(spec.datastore_mounts or {}),
            _mover(session, spec) if transport == "hotadd" else None,
        )
        pairs, warnings = _check(session, vm, point, target)
        state = vm.power_state
        if vm.power_state != "poweredOff":
            if not spec.power_off_first:
                raise InputError(f"{WHAT}: power {vm.name} off first (it is {vm.power_state}), "
                                 "or add --power-off; the guest must not run while its disks are "
                                 "rewritten")
            state = rt.step(power_off, session, vm.ref, step_name=f"power off {vm.name}")
            warnings.append(f"{vm.name} was {vm.power_state}: powered off (hard) by "
                            "--power-off before the rollback")
        plans = [
            rt.step(_plan_disk, session, vm, point, index, disk,
                    step_name=f"changed areas of disk {index}")
            for index, disk in pairs
        ]
        total = sum(p.bytes_to_check for p in plans)
        resets = 0
        if vm.cbt_enabled and total:
            rt.step(reset_change_tracking, session, vm.ref, step_name=f"reset CBT of {vm.name}")
            resets += 1
        disks = []
        with byte_progress(rt, f"roll back {vm.name}", total) as bar:
            for plan in plans:
                done = rt.step(
                    roll_back_vm_disk, session, repository, point, plan.index, plan.disk, target,
                    plan.areas, bar.advance, step_name=f"roll back disk {plan.index}",
                )
                disks.append(_disk_summary(plan, done))
        written = sum(d["bytes_written"] for d in disks)
        if resets and written:
            rt.step(reset_change_tracking, session, vm.ref, step_name=f"reset CBT of {vm.name}")
            resets += 1
        if spec.power_on_after:
            state = rt.step(power_on, session, vm.ref, step_name=f"power on {vm.name}")
    for warning in warnings:
        rt.log.warning("%s", warning)
    rt.log.info("rolled %s back to %s: %d of %d bytes checked differed", vm.name,
                point.short_id, written, sum(d["bytes_checked"] for d in disks))
    summary = {
        "point": point.id,
        "vm": vm.name,
        "instance_uuid": vm.instance_uuid,
        "quick_rollback": True,
        "transport": transport,
        "disks": disks,
        "bytes_written": written,
        "cbt_resets": resets,
        "power_state": state,
        "scan": scanned,
        "warnings": warnings,
        "duration_s": round(time.monotonic() - started, 3),
    }
    rt.publish_table(
        "quick-rollback",
        [{k: v for k, v in d.items() if k != "reason"} for d in disks],
        f"{vm.name} rolled back to {point.short_id}",
    )
    return summary


def _mover(session: Session, spec: RestoreVmSpec) -> hotadd.Mover:
    """The mover VM for ``hotadd``; when nothing chose hotadd, a missing mover names both ways."""
    try:
        return hotadd.find_mover(session, spec.mover)
    except hotadd.MoverNotFound as exc:
        if spec.transport == "hotadd":
            raise
        raise hotadd.MoverNotFound(
            f"{exc.args[0]}; or write through the VM's NFS datastores mounted here "
            "(--datastore-mount NAME=PATH)") from None


def _check(
    session: Session, vm: VMInfo, point: RestorePoint, target: RollbackTarget
) -> tuple[list[tuple[int, VirtualDisk]], list[str]]:
    """The refusals of the module docstring; the (point disk, VM disk) pairs and warnings."""
    if vm.template:
        raise InputError(f"{WHAT}: {vm.name} is a template")
    by_key = {d.key: d for d in vm.disks}
    pairs: list[tuple[int, VirtualDisk]] = []
    for saved in point.disks:
        if "key" not in saved.extra or saved.index not in point.chunks:
            continue
        disk = by_key.get(int(saved.extra["key"]))
        label = saved.extra.get("label") or saved.name
        if disk is None:
            raise InputError(f"{WHAT}: {vm.name} has no disk with key {saved.extra['key']} "
                             f"({label}) any more; restore it as a new VM")
        size = point.chunks[saved.index].size
        if disk.capacity != size:
            raise InputError(f"{WHAT}: {disk.label} of {vm.name} is {disk.capacity} bytes, "
                             f"{size} in the point (resized since); restore it as a new VM")
        pairs.append((saved.index, disk))
    if not pairs:
        raise InputError(f"{WHAT}: point {point.short_id} holds none of {vm.name}'s disks")
    if target.mover is not None:
        for _, disk in pairs:
            ok, why = hotadd.hotadd_possible(target.mover, disk, source_vm=vm.name,
                                             source_datacenter=vm.datacenter)
            if not ok:
                raise hotadd.HotaddRefused(disk.file_name, target.mover.name, why)
    else:
        for datastore in sorted({d.datastore for _, d in pairs}):
            vmconfig.check_transport(session, "direct", datastore, vm.ref, target.mounts)
    if session.get(vm.ref, "snapshot") is not None:
        raise InputError(f"{WHAT}: {vm.name} has snapshots; delete them first (its disks "
                         "would be deltas of a chain)")
    for _, disk in pairs:  # a descriptor we cannot write through is refused before any reset
        if target.transport == "direct":
            mounted_datastore.flat_extent(disk.file_name, target.mounts, disk.capacity)
    held = {d.key for _, d in pairs}
    warnings = [f"{d.label} ({d.node or d.key}) is not in point {point.short_id}: left as it is"
                for d in vm.disks if d.key not in held]
    return pairs, warnings


def _plan_disk(
    session: Session, vm: VMInfo, point: RestorePoint, index: int, disk: VirtualDisk
) -> DiskRollback:
    """What to look at on ``disk``: CBT's areas since the point, else the whole disk."""
    saved = next(d for d in point.disks if d.index == index)
    state = DiskCbtState.from_extra(saved.extra, point.chunks[index].size)

    def whole(reason: str) -> DiskRollback:
        return DiskRollback(index, disk, None, "compare", reason)

    if not vm.cbt_enabled:
        return whole("CBT is off on the VM: the whole disk is compared")
    if not state.change_id:
        return whole("the point recorded no change id: the whole disk is compared")
    if state.uuid and disk.uuid and state.uuid != disk.uuid:
        return whole("the disk was replaced since the point: the whole disk is compared")
    try:
        areas = cbt.query_changed_areas(
            session, vm.ref, None, disk.key, state.change_id, disk.capacity
        )
    except ChangeTrackingError as exc:
        return whole(f"CBT cannot say what changed since the point ({exc.args[-1]}; reset "
                     "since?): the whole disk is compared")
    changed = sum(length for _, length in areas)
    return DiskRollback(index, disk, areas, "cbt",
                        f"CBT: {len(areas)} areas, {changed} bytes written since the point")


def _disk_summary(plan: DiskRollback, done: dict[str, Any]) -> dict[str, Any]:
    return {
        "disk": plan.index,
        "key": plan.disk.key,
        "label": plan.disk.label,
        "file_name": done["file_name"],
        "method": plan.method,
        "reason": plan.reason,
        "bytes_checked": done["bytes_checked"],
        "bytes_written": done["bytes_written"],
        "chunks_fetched": done["chunks_fetched"],
    }

