"""A VM with a physical-mode raw device mapping (a SAN LUN passed to the guest, as failover
clusters and SAN-aware applications use): vSphere keeps such a disk out of every snapshot,
whatever its diskMode says.  The lab does too; a backup skips it with a warning (it tried to
read the LUN's mapping as a disk), a restored VM leaves it out with a warning (it would have
been an empty VMDK of the LUN's size), and ``doctor`` warns.

VMs used: rdm01 and its restored copy, created here and destroyed again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim

from tests.lab.lab_helpers import find_vm, snapshot, vdisks, wait
from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_lab import destroy_vm
from tests.vmbackup.vmbackup_helpers import create_lab_vm, flat_disk_files
from vmkeep.flows.restore_vm import restore_vm
from vmkeep.flows.run import run_flow

pytestmark = pytest.mark.lab
VM, COPY = "rdm01", "rdm01-restored"
MIB = 1 << 20


@pytest.fixture
def rdm01(lab: Any) -> Iterator[tuple[Any, bytes]]:
    """rdm01 on datastore1: Hard disk 1 a VMDK holding ``data``, Hard disk 2 a physical-mode
    RDM of a 4 MiB "LUN" (the mapping file's extent)."""
    data = os.urandom(MIB) + bytes(3 * MIB)
    disk_file = flat_disk_files(lab, VM, VM, data)
    lun_file = flat_disk_files(lab, VM, "lun", b"\x5a" * (4 * MIB))
    dev = vim.vm.device
    disk = dev.VirtualDisk(key=2000, unitNumber=0, controllerKey=1000, capacityInBytes=len(data),
                           backing=dev.VirtualDisk.FlatVer2BackingInfo(
                               fileName=disk_file, diskMode="persistent", thinProvisioned=True))
    rdm = dev.VirtualDisk(key=2001, unitNumber=1, controllerKey=1000, capacityInBytes=4 * MIB,
                          backing=dev.VirtualDisk.RawDiskMappingVer1BackingInfo(
                              fileName=lun_file, compatibilityMode="physicalMode",
                              diskMode="persistent",
                              deviceName="vml.0200000000600a098038303053453f463045727a6c"))
    vm = create_lab_vm(lab, VM, [disk, rdm])
    try:
        yield vm, data
    finally:
        destroy_vm(lab, COPY)
        destroy_vm(lab, VM)


def test_the_lab_keeps_a_physical_rdm_out_of_snapshots(rdm01: tuple[Any, bytes]) -> None:
    vm, _data = rdm01
    lun = vdisks(vm.config)[1].backing
    assert isinstance(lun, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo)
    assert lun.compatibilityMode == "physicalMode" and lun.deviceName.startswith("vml.")
    snap = snapshot(vm, "rdm")
    try:
        now = [d.backing.fileName for d in vdisks(vm.config)]
        assert now[0] != f"[datastore1] {VM}/{VM}.vmdk"  # a delta on top
        assert now[1] == f"[datastore1] {VM}/lun.vmdk"  # the LUN itself, written in place
    finally:
        wait(snap.RemoveSnapshot_Task(False))


def test_a_physical_rdm_is_skipped_by_backups_and_left_out_of_restores(
    lab: Any, rdm01: tuple[Any, bytes], vc_env: dict[str, Any], repo: str
) -> None:
    _vm, data = rdm01
    vc = ("--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"])
    code, out, err = run_cli("backup", "vm", VM, *vc, "--json", repo=repo)
    assert code == 0, err
    summary = json.loads(out)
    assert [d["key"] for d in summary["disks"]] == [2000]
    assert ("disk 2001 (Hard disk 2) is a physical-mode RDM: not in snapshots, skipped"
            in summary["warnings"])
    assert summary["snapshot_removed"]

    restored = run_flow(restore_vm, False, repo=repo, point=summary["id"], name=COPY, **vc_env)
    assert any("disk 2001 was a physical-mode RDM" in w and "left out of the new VM" in w
               for w in restored["warnings"]), restored["warnings"]
    assert len(vdisks(find_vm(lab.connect(), COPY).config)) == 1
    assert lab.read_disk(COPY, 0) == data

    code, out, err = run_cli("doctor", *vc, "--json")
    vms = {v["name"]: v for v in json.loads(out)["vms"]}
    assert vms[VM]["level"] == "warning", vms[VM]
    assert {"level": "warning",
            "reason": "physical-mode RDM(s) skipped (in no snapshot): Hard disk 2"} in vms[
        VM]["findings"]
