"""vMotion: host moves keep CBT; storage moves move files and reset CBT."""

from __future__ import annotations

import os

import pytest
from pyVmomi import vim

from tests.lab.lab_helpers import (
    changed_areas,
    covered,
    enable_cbt,
    find_vm,
    lab_datacenter,
    remove_all_snapshots,
    snapshot,
    vdisks,
    wait,
)

pytestmark = pytest.mark.lab


def host_named(si, name):
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        return next(h for h in view.view if h.name == name)
    finally:
        view.Destroy()


def ds_named(si, name):
    dc = lab_datacenter(si)
    return next(d for d in dc.datastore if d.name == name)


def test_host_vmotion_keeps_cbt(esx_lab, si):
    vm = find_vm(si, "small01")
    remove_all_snapshots(vm)
    enable_cbt(vm)
    s1 = snapshot(vm, "before")
    cid = vdisks(s1.config)[0].backing.changeId
    wait(s1.RemoveSnapshot_Task(False))
    src = vm.runtime.host.name
    dst = "esx01.lab.local" if src != "esx01.lab.local" else "esx02.lab.local"
    wait(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=host_named(si, dst))))
    assert vm.runtime.host.name == dst
    assert vm in host_named(si, dst).vm and vm not in host_named(si, src).vm
    extents = esx_lab.write("small01", 3, seed=4)
    s2 = snapshot(vm, "after")
    try:
        areas = changed_areas(vm, s2, vdisks(s2.config)[0].key, cid)
        assert covered(extents, areas)
    finally:
        wait(s2.RemoveSnapshot_Task(False))
    # to the standalone host: the resource pool follows
    wait(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=host_named(si, "esx03.lab.local"))))
    try:
        assert vm.runtime.host.name == "esx03.lab.local"
        assert vm.resourcePool.owner.name == "esx03.lab.local" or vm.resourcePool.parent is not None
    finally:  # the lab is shared by the whole session: put the VM back where it was
        wait(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=host_named(si, src))))


def test_storage_vmotion_moves_files_and_resets_cbt(esx_lab, si):
    vm = find_vm(si, "small04")
    remove_all_snapshots(vm)
    enable_cbt(vm)
    s1 = snapshot(vm, "before")
    cid = vdisks(s1.config)[0].backing.changeId
    wait(s1.RemoveSnapshot_Task(False))
    src = vdisks(vm.config)[0].backing.fileName.split("]")[0][1:]
    dst = "datastore2" if src == "datastore1" else "datastore1"
    content = esx_lab.read_disk("small04", 0)
    wait(vm.RelocateVM_Task(vim.vm.RelocateSpec(datastore=ds_named(si, dst))))
    backing = vdisks(vm.config)[0].backing
    assert backing.fileName == f"[{dst}] small04/small04.vmdk"
    assert vm.config.files.vmPathName == f"[{dst}] small04/small04.vmx"
    assert [d.name for d in vm.datastore] == [dst]
    assert os.path.exists(esx_lab.datastore_dir(dst) / "small04" / "small04-flat.vmdk")
    assert not os.path.exists(esx_lab.datastore_dir(src) / "small04" / "small04-flat.vmdk")
    assert esx_lab.read_disk("small04", 0) == content
    s2 = snapshot(vm, "after")
    try:
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(s2, vdisks(s2.config)[0].key, 0, cid)
    finally:
        wait(s2.RemoveSnapshot_Task(False))
        # the lab is shared by the whole session: put the VM back on its datastore
        wait(vm.RelocateVM_Task(vim.vm.RelocateSpec(datastore=ds_named(si, src))))


def test_hosts_use_only_datastores_they_mount(esx_lab, si):
    """As vSphere: a VM's files stay on datastores its host mounts (esx03-local: esx03 only).
    Refusals are InaccessibleDatastore and change nothing."""
    vm = find_vm(si, "small04")
    remove_all_snapshots(vm)
    src_host = vm.runtime.host.name
    src_ds = vdisks(vm.config)[0].backing.fileName.split("]")[0][1:]
    assert src_host != "esx03.lab.local"
    before = vdisks(vm.config)[0].backing.fileName
    local_ds, esx03 = ds_named(si, "esx03-local"), host_named(si, "esx03.lab.local")
    disk = vdisks(vm.config)[0]

    def refused(task):
        with pytest.raises(vim.fault.InaccessibleDatastore) as exc:
            wait(task)
        assert "esx03-local" in exc.value.msg and "not accessible from host" in exc.value.msg
        assert vdisks(vm.config)[0].backing.fileName == before
        assert vm.runtime.host.name == src_host

    # storage moves (whole VM, one disk) to a datastore the VM's host does not mount
    refused(vm.RelocateVM_Task(vim.vm.RelocateSpec(datastore=local_ds)))
    refused(vm.RelocateVM_Task(vim.vm.RelocateSpec(disk=[
        vim.vm.RelocateSpec.DiskLocator(diskId=disk.key, datastore=local_ds)])))
    # attaching another VM's disk from there, or creating a new disk there
    ctrl = next(d for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualSCSIController))
    foreign = vdisks(find_vm(si, "local01").config)[0].backing.fileName
    assert foreign.startswith("[esx03-local]")
    n_devices = len(vm.config.hardware.device)
    for file_name, file_op in ((foreign, None), ("[esx03-local] small04/extra.vmdk", "create")):
        new = vim.vm.device.VirtualDisk(
            key=-1, controllerKey=ctrl.key, unitNumber=6, capacityInKB=1024,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=file_name, diskMode="persistent"))
        change = vim.vm.device.VirtualDeviceSpec(operation="add", device=new)
        if file_op:
            change.fileOperation = file_op
        refused(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[change])))
        assert len(vm.config.hardware.device) == n_devices
    assert not (esx_lab.datastore_dir("esx03-local") / "small04").exists()
    # a new VM placed on a host that does not mount its datastore (vCenter checks the pair)
    esx01 = host_named(si, src_host)
    config = vim.vm.ConfigSpec(name="x-nowhere", numCPUs=1, memoryMB=128, guestId="otherGuest",
                               files=vim.vm.FileInfo(vmPathName="[esx03-local]"))
    with pytest.raises(vim.fault.InaccessibleDatastore):
        wait(lab_datacenter(si).vmFolder.CreateVM_Task(
            config, esx01.parent.resourcePool, esx01))
    with pytest.raises(LookupError):
        find_vm(si, "x-nowhere")

    # host and storage together: allowed; then the host alone cannot leave the datastore behind
    wait(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=esx03, datastore=local_ds)))
    try:
        assert vm.runtime.host.name == "esx03.lab.local"
        assert [d.name for d in vm.datastore] == ["esx03-local"]
        moved = vdisks(vm.config)[0].backing.fileName
        with pytest.raises(vim.fault.InaccessibleDatastore):
            wait(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=host_named(si, src_host))))
        assert vm.runtime.host.name == "esx03.lab.local"
        assert vdisks(vm.config)[0].backing.fileName == moved
    finally:  # the lab is shared by the whole session: put the VM back where it was
        wait(vm.RelocateVM_Task(vim.vm.RelocateSpec(
            host=host_named(si, src_host), datastore=ds_named(si, src_ds))))
    assert vdisks(vm.config)[0].backing.fileName == before
