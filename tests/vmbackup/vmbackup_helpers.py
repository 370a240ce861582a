"""Helpers for VM backup tests: lab sessions, snapshot listing, vMotion, restored-disk hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import inventory, snapshots
from vmkeep.vsphere.connection import Session, connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.tls import TLSOptions
from vmkeep.vsphere.waiter import wait_for_task


def lab_session(lab: Any) -> Session:
    return connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile))


def all_snapshots(lab: Any) -> dict[str, list[str]]:
    with lab_session(lab) as s:
        out: dict[str, list[str]] = {}
        for vm in inventory.list_vms(s):
            names = [n.name for n in snapshots.snapshots_of(s, vm.ref)]
            if names:
                out[vm.name] = names
        return out


def vmkeep_snapshots(lab: Any) -> list[str]:
    return [n for names in all_snapshots(lab).values() for n in names if n.startswith("vmkeep-")]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def restored_hash(repo: str, point_id: str, disk: int, tmp: Path) -> str:
    repository = Repository.open(repo)
    out = tmp / f"r-{point_id[:8]}-{disk}.img"
    restore_disk(repository, repository.load_point(point_id), disk, str(out))
    digest = sha(out.read_bytes())
    out.unlink()
    return digest


def relocate(lab: Any, vm_name: str, host: str | None = None, datastore: str | None = None) -> None:
    """vMotion (host) or storage vMotion (datastore) a lab VM."""
    from pyVmomi import vim

    with lab_session(lab) as s:
        vm = next(v for v in inventory.list_vms(s) if v.name == vm_name)
        content = s.content
        spec = vim.vm.RelocateSpec()
        if host:
            view = content.viewManager.CreateContainerView(
                content.rootFolder, [vim.HostSystem], True
            )
            spec.host = next(h for h in view.view if h.name == host)
            view.DestroyView()
        if datastore:
            view = content.viewManager.CreateContainerView(
                content.rootFolder, [vim.Datastore], True
            )
            spec.datastore = next(d for d in view.view if d.name == datastore)
            view.DestroyView()
        wait_for_task(s, vm.ref.RelocateVM_Task(spec))


def vm_host(lab: Any, vm_name: str) -> str:
    with lab_session(lab) as s:
        return next(v.host for v in inventory.list_vms(s) if v.name == vm_name) or ""


def flat_disk_files(lab: Any, vm_name: str, stem: str, data: bytes) -> str:
    """A flat VMDK holding ``data`` (descriptor and extent) in ``vm_name``'s folder on the lab's
    datastore1, as a restore over /folder leaves one; returns its ``[datastore1] …`` path."""
    folder = lab.datastore_dir("datastore1") / vm_name
    folder.mkdir(exist_ok=True)
    (folder / f"{stem}-flat.vmdk").write_bytes(data)
    (folder / f"{stem}.vmdk").write_bytes((
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n'
        f'RW {len(data) // 512} VMFS "{stem}-flat.vmdk"\n').encode())
    return f"[datastore1] {vm_name}/{stem}.vmdk"


def create_lab_vm(lab: Any, name: str, disks: list[Any]) -> Any:
    """A powered-off VM ``name`` on esx01's datastore1 with ``disks`` (VirtualDisk devices on
    the paravirtual SCSI controller 1000), created through CreateVM_Task as an administrator
    would; the caller destroys it."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    dev = vim.vm.device
    scsi = dev.ParaVirtualSCSIController(key=1000, busNumber=0, sharedBus="noSharing")
    spec = vim.vm.ConfigSpec(
        name=name, guestId="otherLinux64Guest", memoryMB=512, numCPUs=1,
        files=vim.vm.FileInfo(vmPathName=f"[datastore1] {name}/{name}.vmx"),
        deviceChange=[dev.VirtualDeviceSpec(operation="add", device=d) for d in (scsi, *disks)],
    )
    content = lab.connect().RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        host = next(h for h in view.view if h.name == "esx01.lab.local")
    finally:
        view.Destroy()
    dc = host.parent
    while not isinstance(dc, vim.Datacenter):
        dc = dc.parent
    task = dc.vmFolder.CreateVM_Task(spec, host.parent.resourcePool, host)
    WaitForTask(task)
    return task.info.result
