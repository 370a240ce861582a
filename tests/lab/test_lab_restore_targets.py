"""VMs created through the API (as a restore does) get real disks and ESX semantics."""

from __future__ import annotations

import base64
import os
import urllib.request

import pytest
from pyVmomi import vim

from tests.lab.lab_helpers import lab_datacenter, snapshot, vdisks, wait

pytestmark = pytest.mark.lab


def put_folder(lab, ds: str, rel: str, data: bytes) -> None:
    url = f"https://{lab.host}:{lab.port}/folder/{rel}?dcPath={lab.datacenter}&dsName={ds}"
    auth = base64.b64encode(f"{lab.user}:{lab.password}".encode()).decode()
    req = urllib.request.Request(
        url, data=data, method="PUT", headers={"Authorization": "Basic " + auth}
    )
    with urllib.request.urlopen(req, context=lab.ssl_context()) as resp:
        assert resp.status in (200, 201)


def test_create_vm_with_new_disk_then_snapshot_and_destroy(esx_lab, si):
    dc = lab_datacenter(si)
    host = next(h for c in dc.hostFolder.childEntity for h in c.host if h.name == "esx02.lab.local")
    # Upload the restored disk's content first, as a restore over /folder would.
    payload = os.urandom(1 << 20)
    put_folder(
        esx_lab, "datastore1", "restored01/restored01-flat.vmdk", payload + b"\0" * (3 << 20)
    )
    desc = (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n'
        'RW 8192 VMFS "restored01-flat.vmdk"\n'
    )
    put_folder(esx_lab, "datastore1", "restored01/restored01.vmdk", desc.encode())
    disk = vim.vm.device.VirtualDisk(
        key=2000,
        unitNumber=0,
        controllerKey=1000,
        capacityInBytes=4 << 20,
        capacityInKB=4 << 10,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName="[datastore1] restored01/restored01.vmdk",
            diskMode="persistent",
            thinProvisioned=True,
        ),
    )
    scsi = vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0, sharedBus="noSharing")
    spec = vim.vm.ConfigSpec(
        name="restored01",
        guestId="otherLinux64Guest",
        memoryMB=512,
        numCPUs=1,
        files=vim.vm.FileInfo(vmPathName="[datastore1] restored01/restored01.vmx"),
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=scsi),
            vim.vm.device.VirtualDeviceSpec(operation="add", device=disk),
        ],
    )
    vm = wait(dc.vmFolder.CreateVM_Task(spec, host.parent.resourcePool, host))
    assert vm.name == "restored01"
    assert esx_lab.read_disk("restored01", 0, length=1 << 20) == payload
    snap = snapshot(vm, "after-restore")
    assert vdisks(vm.config)[0].backing.fileName == "[datastore1] restored01/restored01-000001.vmdk"
    assert vdisks(snap.config)[0].backing.fileName == "[datastore1] restored01/restored01.vmdk"
    wait(vm.Destroy_Task())
    assert "restored01" not in [v["name"] for v in esx_lab.client.status()["lab"]["vms"]]
