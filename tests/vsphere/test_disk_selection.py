"""A job's disk exclusions (pure): which disks ``[VM/]DISK`` rules leave out, what is refused,
what is only a warning, and the device nodes the vSphere Client shows."""

from __future__ import annotations

import pytest
from pyVmomi import vim

from vmkeep.jobs.specs import BackupVmSpec, InvalidSpec, build
from vmkeep.vsphere.disk_selection import AllDisksExcluded, excluded_disks, parse_rule
from vmkeep.vsphere.inventory import VirtualDisk, VMInfo, device_node, disks_from_devices


def _disk(key: int, node: str, mode: str = "persistent") -> VirtualDisk:
    return VirtualDisk(key=key, label=f"Hard disk {key - 1999}", capacity=1 << 30,
                       file_name=f"[ds] vm/vm_{key}.vmdk", datastore="ds", thin=True,
                       disk_mode=mode, change_id=None, controller_key=1000, unit_number=0,
                       node=node)


def _vm(*disks: VirtualDisk, name: str = "db01") -> VMInfo:
    return VMInfo(ref=None, moid="vm-1", name=name, instance_uuid="5003-uuid", bios_uuid=None,
                  datacenter="DC0", folder="/DC0/vm", host=None, cluster=None,
                  datastores=("ds",), power_state="poweredOn", template=False, guest_id=None,
                  cbt_enabled=True, consolidation_needed=False, vmx_path="[ds] vm/vm.vmx",
                  disks=disks)


VM = _vm(_disk(2000, "scsi0:0"), _disk(2001, "scsi0:1"), _disk(2002, "scsi1:0"))


def _keys(rules: list[str], vm: VMInfo = VM, warnings: list[str] | None = None) -> list[int]:
    return [e.disk.key for e in excluded_disks(vm, rules, warnings)]


def test_a_disk_is_named_by_node_label_glob_or_key_for_every_vm_or_one() -> None:
    assert _keys(["scsi0:1"]) == [2001]
    assert _keys(["SCSI1:0"]) == [2002]  # case does not matter
    assert _keys(["hard disk 2"]) == [2001]
    assert _keys(["Hard disk [23]"]) == [2001, 2002]
    assert _keys(["scsi1:*"]) == [2002]
    assert _keys(["2002"]) == [2002]
    assert _keys(["db01/scsi0:1", "web*/scsi1:0"]) == [2001]  # the second is another VM's
    assert _keys(["db*/scsi1:0", "5003-uuid/Hard disk 2"]) == [2001, 2002]
    assert _keys([]) == []
    [excluded] = excluded_disks(VM, ["db01/scsi0:1"])
    assert excluded.record() == {"key": 2001, "label": "Hard disk 2", "node": "scsi0:1",
                                 "capacity": 1 << 30, "rule": "db01/scsi0:1"}


def test_a_rule_naming_the_vm_but_none_of_its_disks_is_a_warning_a_pattern_is_not() -> None:
    warnings: list[str] = []
    assert _keys(["db01/scsi3:0", "db*/scsi3:0", "scsi3:0"], warnings=warnings) == []
    [warning] = warnings
    assert warning.startswith("disk exclusion 'db01/scsi3:0' matches no disk of db01 (disks: "
                              "Hard disk 1 (scsi0:0, key 2000)")


def test_excluding_every_disk_the_snapshot_holds_is_refused() -> None:
    with pytest.raises(AllDisksExcluded) as caught:
        _keys(["scsi*"])
    assert caught.value.exit_code == 14
    assert "VM db01 has nothing left to back up" in caught.value.get_message()
    with_independent = _vm(_disk(2000, "scsi0:0"), _disk(2001, "scsi0:1", "independent_persistent"))
    with pytest.raises(AllDisksExcluded):
        _keys(["scsi0:0"], with_independent)
    only_independent = _vm(_disk(2000, "scsi0:0", "independent_persistent"))
    assert _keys([], only_independent) == []  # not an exclusion: the backup says why


def test_rules_are_checked_when_the_spec_is_built() -> None:
    with pytest.raises(ValueError, match="names no disk"):
        parse_rule("db01/")
    with pytest.raises(InvalidSpec) as caught:
        build(BackupVmSpec, {"repo": "/r", "vcenter": "vc.example", "vm": "db01",
                             "exclude_disks": ["db01/ "]})
    assert "exclude_disks" in caught.value.get_message()
    for unset in ("", None):  # a deployment's unset variable
        spec = build(BackupVmSpec, {"repo": "/r", "vcenter": "vc.example", "vm": "db01",
                                    "exclude_disks": unset})
        assert spec.exclude_disks == []


def test_device_nodes_as_the_vsphere_client_shows_them() -> None:
    dev = vim.vm.device
    assert device_node(dev.ParaVirtualSCSIController(key=1001, busNumber=1), 3) == "scsi1:3"
    assert device_node(dev.VirtualAHCIController(key=15000, busNumber=0), 2) == "sata0:2"
    assert device_node(dev.VirtualNVMEController(key=31000, busNumber=0), 0) == "nvme0:0"
    assert device_node(dev.VirtualIDEController(key=200, busNumber=1), 0) == "ide1:0"
    assert device_node(dev.VirtualUSBController(key=7000, busNumber=0), 0) is None
    assert device_node(None, 0) is None
    controller = dev.VirtualLsiLogicController(key=1000, busNumber=0)
    disk = dev.VirtualDisk(key=2001, controllerKey=1000, unitNumber=1, capacityInBytes=1 << 20,
                           deviceInfo=vim.Description(label="Hard disk 2", summary=""),
                           backing=dev.VirtualDisk.FlatVer2BackingInfo(
                               fileName="[ds] vm/vm_1.vmdk", diskMode="persistent"))
    [found] = disks_from_devices([controller, disk], {})
    assert found.node == "scsi0:1" and found.label == "Hard disk 2"


def test_a_run_of_several_vms_hands_every_rule_to_each_vm() -> None:
    from vmkeep.jobs.specs import BackupVmsSpec

    many = build(BackupVmsSpec, {"repo": "/r", "vcenter": "vc.example", "patterns": ["db*"],
                                 "exclude_disks": ["db01/scsi0:1", "scsi1:*"]})
    one = many.for_vm("5003-uuid", "db01")
    assert one.exclude_disks == ["db01/scsi0:1", "scsi1:*"]
    assert [e.disk.key for e in excluded_disks(VM, one.exclude_disks)] == [2001, 2002]
