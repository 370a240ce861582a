"""A VM with a shared (multi-writer) disk, as Oracle RAC and Windows failover-cluster nodes have
them: vSphere snapshots no such VM unless the shared disk is independent (VMware KB 1034165),
and lets a disk's sharing or mode change only while the VM is powered off and has no snapshot.
The lab refuses as vSphere does; vmkeep refuses the VM before it changes anything on it (no CBT
stun, no snapshot), naming the disk and the remedy, and ``doctor`` lists it as a problem; with
the shared disk independent, the VM is backed up without it.

VMs used: db01 (powered off, its disks' sharing changed, then put back as they were).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests.lab.lab_helpers import find_vm, remove_all_snapshots, snapshot, vdisks, wait
from tests.restore.restore_helpers import run_cli
from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots

pytestmark = pytest.mark.lab
VM = "db01"  # Hard disk 1: 32 MiB ext4; Hard disk 2: 16 MiB independent
SHARED, NOT_SHARED = "sharingMultiWriter", "sharingNone"


def _set_sharing(vm: Any, index: int, sharing: str) -> None:
    device = vdisks(vm.config)[index]
    device.backing.sharing = sharing
    change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=device)
    wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[change])))


@pytest.fixture
def db01(lab: Any) -> Iterator[Any]:
    """db01 powered off, without snapshots; afterwards its disks unshared and running again."""
    vm = find_vm(lab.connect(), VM)
    remove_all_snapshots(vm)
    if vm.runtime.powerState == "poweredOn":
        wait(vm.PowerOffVM_Task())
    try:
        yield vm
    finally:
        if vm.runtime.powerState == "poweredOn":
            wait(vm.PowerOffVM_Task())
        remove_all_snapshots(vm)
        for index in (0, 1):
            _set_sharing(vm, index, NOT_SHARED)
        wait(vm.PowerOnVM_Task())


def test_the_lab_refuses_what_vsphere_refuses(db01: Any) -> None:
    wait(db01.PowerOnVM_Task())
    with pytest.raises(vim.fault.InvalidPowerState):
        _set_sharing(db01, 0, SHARED)  # sharing changes with the VM powered off only
    wait(db01.PowerOffVM_Task())
    _set_sharing(db01, 0, SHARED)
    assert vdisks(db01.config)[0].backing.sharing == SHARED
    with pytest.raises(vmodl.fault.NotSupported):
        snapshot(db01, "shared")
    assert db01.snapshot is None
    _set_sharing(db01, 0, NOT_SHARED)
    wait(snapshot(db01, "unshared").RemoveSnapshot_Task(False))
    _set_sharing(db01, 1, SHARED)  # the independent disk: in no snapshot, so allowed
    taken = snapshot(db01, "independent shared")
    with pytest.raises(vim.fault.InvalidState):
        _set_sharing(db01, 1, NOT_SHARED)  # not while a snapshot holds the VM
    wait(taken.RemoveSnapshot_Task(False))


def test_a_shared_disk_is_refused_before_anything_changes_and_doctor_names_it(
    lab: Any, db01: Any, vc_env: dict[str, Any], repo: str
) -> None:
    _set_sharing(db01, 0, SHARED)
    cbt_before = db01.config.changeTrackingEnabled
    code, out, err = run_cli("backup", "vm", VM, "--vcenter", vc_env["vcenter"],
                             "--cafile", vc_env["cafile"], repo=repo)
    assert code == 16 and "Traceback" not in err, err
    line = " ".join(err.split())
    assert f"VM {VM} cannot be snapshotted" in line
    assert "Hard disk 1 (scsi0:0, key 2000) is shared (multi-writer)" in line
    assert "independent-persistent" in line and "nothing was changed" in line
    assert out == "" and db01.snapshot is None and vmkeep_snapshots(lab) == []
    assert db01.config.changeTrackingEnabled == cbt_before  # no CBT stun either

    code, out, err = run_cli("doctor", "--vcenter", vc_env["vcenter"], "--cafile",
                             vc_env["cafile"], "--json")
    assert code == 1, err
    vms = {v["name"]: v for v in json.loads(out)["vms"]}
    assert vms[VM]["level"] == "problem"
    assert any("Hard disk 1 is shared (multi-writer)" in f["reason"]
               for f in vms[VM]["findings"])


def test_a_shared_independent_disk_is_skipped(
    db01: Any, vc_env: dict[str, Any], repo: str
) -> None:
    """Oracle RAC's way: the shared disks independent-persistent, the VM backed up without
    them."""
    _set_sharing(db01, 1, SHARED)
    code, out, err = run_cli("backup", "vm", VM, "--vcenter", vc_env["vcenter"],
                             "--cafile", vc_env["cafile"], "--json", repo=repo)
    assert code == 0, err
    summary = json.loads(out)
    assert [d["key"] for d in summary["disks"]] == [2000]
    assert any("is independent: not in snapshots, skipped" in w for w in summary["warnings"])
    assert summary["snapshot_removed"]
