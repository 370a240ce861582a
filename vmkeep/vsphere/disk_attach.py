"""Restore one disk and attach it to an existing VM (``vmkeep restore disk``), the supported way;
also attach and detach the disks of an instant disk recovery (:mod:`vmkeep.browse.instant_disks`).

NFC leases only create disks as part of a new VM, so (as ``govc import.vmdk`` does):

1. :func:`helper_spec` — a minimal helper VM ``vmkeep-restore-…`` holding one disk of the
   backed-up capacity on the chosen datastore, carrying vmkeep's half-restored mark; it is
   created by ``ImportVApp`` and its disk filled through the lease;
2. :func:`move_disk_to` — the disk is detached from the helper (``ReconfigVM`` remove, files
   kept) and moved with ``MoveVirtualDisk_Task`` beside the target VM
   (``[ds] <target folder>/<target>-vmkeep-<point>-<n>.vmdk``, never over an existing file);
3. :func:`attach_disk` — added to the target VM (running or not) on a free unit of its first
   SCSI controller (``ReconfigVM`` add, no file operation); or :func:`replace_disk` — put in the
   place of one of its disks (one ``ReconfigVM``: the old disk removed without a file operation,
   its files kept, the restored one added on the same controller and unit); the helper VM is
   destroyed.

If the helper or the moved disk is left by a crash, the sweep removes the marked helper; a moved
but unattached disk is deleted by the caller's cleanup.
"""

from __future__ import annotations

import contextlib
import posixpath
from typing import Any

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.datastore_paths import split_datastore_path
from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.inventory import datacenter_of
from vmkeep.vsphere.vmconfig import Provisioning
from vmkeep.vsphere.waiter import wait_for_task

HELPER_PREFIX = "vmkeep-restore-"


def helper_spec(
    name: str, datastore: str, capacity: int, provisioning: Provisioning,
    marker: dict[str, str],
) -> Any:
    """``ConfigSpec`` of the helper VM (one paravirtual SCSI controller and the disk, allocated
    as ``provisioning`` says)."""
    from pyVmomi import vim

    dev = vim.vm.device
    add = dev.VirtualDeviceSpec.Operation.add
    ctl = dev.ParaVirtualSCSIController(
        key=-100, busNumber=0, sharedBus=dev.VirtualSCSIController.Sharing.noSharing
    )
    disk = dev.VirtualDisk(
        key=-200, capacityInBytes=capacity, controllerKey=-100, unitNumber=0,
        backing=dev.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[{datastore}]", diskMode="persistent",
            thinProvisioned=provisioning.thin, eagerlyScrub=provisioning.eagerly_scrub,
        ),
    )
    return vim.vm.ConfigSpec(
        name=name, guestId="otherGuest64", numCPUs=1, memoryMB=4,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in marker.items()],
        deviceChange=[
            dev.VirtualDeviceSpec(operation=add, device=ctl),
            dev.VirtualDeviceSpec(
                operation=add, fileOperation=dev.VirtualDeviceSpec.FileOperation.create,
                device=disk,
            ),
        ],
    )


def _disks(session: Session, vm: Any) -> list[Any]:
    from pyVmomi import vim

    devices = session.get(vm, "config.hardware.device") or []
    return [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]


def first_disk_file(session: Session, vm: Any) -> str:
    disks = _disks(session, vm)
    if not disks:
        raise VSphereError("the helper VM has no disk")
    return str(disks[0].backing.fileName)


def target_path(session: Session, vm: Any, datastore: str, stem: str) -> str:
    """``[datastore] <target's folder>/<stem>.vmdk`` (the target's own folder name)."""
    vmx = str(session.get(vm, "config.files.vmPathName") or "")
    _, vmx_rel = split_datastore_path(vmx) if vmx else ("", "")
    folder = posixpath.dirname(vmx_rel) or str(session.get(vm, "name"))
    return f"[{datastore}] {folder}/{stem}.vmdk"


def move_disk_to(session: Session, helper: Any, dest: str) -> str:
    """Detach the helper's disk (files kept) and move it to ``dest``; returns ``dest``."""
    from pyVmomi import vim

    dev = vim.vm.device
    disk = _disks(session, helper)[0]
    source = str(disk.backing.fileName)
    spec = vim.vm.ConfigSpec(deviceChange=[dev.VirtualDeviceSpec(
        operation=dev.VirtualDeviceSpec.Operation.remove, device=disk,
    )])
    wait_for_task(session, session.call(helper.ReconfigVM_Task, spec), what="detach disk")
    dc = datacenter_of(session, helper)
    content = session.content
    ds, rel = split_datastore_path(dest)
    with contextlib.suppress(VSphereError):  # the folder usually exists
        session.call(content.fileManager.MakeDirectory,
                     f"[{ds}] {posixpath.dirname(rel)}", dc, True, what="make folder")
    task = session.call(
        content.virtualDiskManager.MoveVirtualDisk_Task, source, dc, dest, dc, False,
        what="move restored disk",
    )
    wait_for_task(session, task, what=f"move {source} to {dest}")
    return dest


def delete_disk(session: Session, vm_near: Any, path: str) -> None:
    """Delete a restored disk file that could not be attached (best effort)."""
    dc = datacenter_of(session, vm_near)
    with contextlib.suppress(Exception):
        task = session.call(session.content.virtualDiskManager.DeleteVirtualDisk_Task, path, dc)
        wait_for_task(session, task, what=f"delete {path}")


def replace_disk(
    session: Session, vm: Any, old_key: int, path: str, capacity: int
) -> dict[str, Any]:
    """Put the disk file ``path`` in the place of ``vm``'s disk ``old_key`` (same controller and
    unit) in one reconfiguration; the old disk's files are kept (returned as ``replaced``)."""
    from pyVmomi import vim

    dev = vim.vm.device
    old = next((d for d in _disks(session, vm) if d.key == old_key), None)
    if old is None:
        raise VSphereError(f"the target VM has no disk {old_key} any more")
    disk = dev.VirtualDisk(
        key=-1, controllerKey=old.controllerKey, unitNumber=old.unitNumber,
        capacityInBytes=capacity,
        backing=dev.VirtualDisk.FlatVer2BackingInfo(fileName=path, diskMode="persistent"),
    )
    spec = vim.vm.ConfigSpec(deviceChange=[
        dev.VirtualDeviceSpec(operation=dev.VirtualDeviceSpec.Operation.remove, device=old),
        dev.VirtualDeviceSpec(operation=dev.VirtualDeviceSpec.Operation.add, device=disk),
    ])
    wait_for_task(session, session.call(vm.ReconfigVM_Task, spec), what="replace disk")
    key = next((d.key for d in _disks(session, vm) if d.backing.fileName == path), None)
    return {"file_name": path, "controller_key": old.controllerKey,
            "unit_number": old.unitNumber, "key": key, "replaced": str(old.backing.fileName)}


def attach_disk(session: Session, vm: Any, path: str, capacity: int) -> dict[str, Any]:
    """Add the disk file ``path`` to ``vm`` on a free unit of its first SCSI controller."""
    from pyVmomi import vim

    dev = vim.vm.device
    devices = session.get(vm, "config.hardware.device") or []
    ctl = next((d for d in devices if isinstance(d, dev.VirtualSCSIController)), None)
    if ctl is None:
        raise VSphereError("the target VM has no SCSI controller to attach the disk to")
    used = {d.unitNumber for d in devices if getattr(d, "controllerKey", None) == ctl.key}
    unit = next((u for u in range(16) if u != 7 and u not in used), None)
    if unit is None:
        raise VSphereError("the target VM's first SCSI controller has no free unit")
    disk = dev.VirtualDisk(
        key=-1, controllerKey=ctl.key, unitNumber=unit, capacityInBytes=capacity,
        backing=dev.VirtualDisk.FlatVer2BackingInfo(fileName=path, diskMode="persistent"),
    )
    spec = vim.vm.ConfigSpec(deviceChange=[dev.VirtualDeviceSpec(
        operation=dev.VirtualDeviceSpec.Operation.add, device=disk,
    )])
    wait_for_task(session, session.call(vm.ReconfigVM_Task, spec), what="attach restored disk")
    key = next((d.key for d in _disks(session, vm) if d.backing.fileName == path), None)
    return {"file_name": path, "controller_key": ctl.key, "unit_number": unit, "key": key}


def detach_disks(session: Session, vm: Any, devices: list[Any]) -> None:
    """Remove the disk ``devices`` from ``vm`` in one reconfiguration, their files kept (no file
    operation); the VM may be running."""
    from pyVmomi import vim

    dev = vim.vm.device
    spec = vim.vm.ConfigSpec(deviceChange=[
        dev.VirtualDeviceSpec(operation=dev.VirtualDeviceSpec.Operation.remove, device=d)
        for d in devices])
    wait_for_task(session, session.call(vm.ReconfigVM_Task, spec), what="detach disks")
