"""VM settings captured and re-applied for a full VM restore (pure logic on pyVmomi objects)."""

from __future__ import annotations

from pyVmomi import vim

from vmkeep.vsphere.restore_marker import MARK_KEY, new_mark, parse_mark
from vmkeep.vsphere.vmsettings import apply_settings, capture_settings, restorable_extra_config

OPT = vim.option.OptionValue


def _props() -> dict:
    return {
        "config.bootOptions": vim.vm.BootOptions(efiSecureBootEnabled=True, bootDelay=3000),
        "config.extraConfig": [
            OPT(key="disk.EnableUUID", value="TRUE"), OPT(key="uuid.bios", value="56 4d"),
            OPT(key="ethernet0.generatedAddress", value="00:50:56:aa:bb:cc"),
            OPT(key="nvram", value="old.nvram"), OPT(key="guestinfo.userdata", value="abc"),
            OPT(key=MARK_KEY, value="x"),
        ],
        "config.cpuAllocation": vim.ResourceAllocationInfo(
            reservation=500, limit=-1, shares=vim.SharesInfo(level="custom", shares=1234)
        ),
        "config.memoryAllocation": vim.ResourceAllocationInfo(reservation=128),
        "config.hardware.device": [vim.vm.device.VirtualTPM(key=11000)],
    }


def test_capture_then_apply_restores_settings_with_a_new_identity():
    saved = capture_settings(_props())
    assert saved["secure_boot"] and saved["vtpm"] and saved["boot_delay_ms"] == 3000
    assert saved["cpu_allocation"] == {
        "reservation": 500, "limit": -1, "expandable": None, "shares_level": "custom",
        "shares": 1234,
    }
    config = {**saved, "firmware": "efi", "bios_uuid": "b", "instance_uuid": "i"}
    spec = vim.vm.ConfigSpec(deviceChange=[])
    mark = new_mark("run-1")
    warnings = apply_settings(spec, config, keep_identity=False, marker={MARK_KEY: mark.value()})
    extra = {o.key: o.value for o in spec.extraConfig}
    assert extra == {"disk.EnableUUID": "TRUE", "guestinfo.userdata": "abc",
                     MARK_KEY: mark.value()}
    assert spec.firmware == "efi" and spec.bootOptions.efiSecureBootEnabled
    assert spec.cpuAllocation.shares.shares == 1234 and spec.memoryAllocation.reservation == 128
    assert spec.uuid is None and spec.instanceUuid is None
    assert [type(c.device).__name__ for c in spec.deviceChange] == ["vim.vm.device.VirtualTPM"]
    assert len(warnings) == 1 and "key provider" in warnings[0]
    assert parse_mark(extra[MARK_KEY]) == mark


def test_keep_identity_sets_the_saved_uuids():
    spec = vim.vm.ConfigSpec()
    apply_settings(spec, {"bios_uuid": "b", "instance_uuid": "i"}, keep_identity=True, marker={})
    assert (spec.uuid, spec.instanceUuid) == ("b", "i")


def test_identity_keys_are_dropped_and_others_kept():
    kept = restorable_extra_config({
        "uuid.location": "x", "sched.swap.derivedName": "y", "scsi0:0.ctkEnabled": "TRUE",
        "vmkeep.restore.incomplete": "z", "disk.EnableUUID": "TRUE", "app.x": "1",
    })
    assert kept == {"disk.EnableUUID": "TRUE", "app.x": "1"}


def test_malformed_marks_are_not_marks():
    assert parse_mark(None) is None and parse_mark("") is None
    assert parse_mark("a;notatime;h;1") is None and parse_mark("a;2026-01-01T00:00:00;h;x") is None


def test_a_version_1_configuration_still_builds_a_spec():
    from vmkeep.vsphere.vmconfig import build_spec

    v1 = {
        "format": "vmkeep.vmconfig", "version": 1, "name": "old", "guest_id": "otherLinux64Guest",
        "num_cpu": 2, "memory_mb": 512, "firmware": "bios",
        "controllers": [{"key": 1000, "type": "ParaVirtualSCSIController", "bus": 0}],
        "disks": [{"key": 2000, "capacity": 1 << 20, "controller_key": 1000, "unit_number": 0,
                   "thin": True, "disk_mode": "persistent"}],
        "nics": [{"type": "VirtualVmxnet3", "network": "VM Network", "mac": "00:50:56:01:02:03"}],
    }
    spec, skipped, warnings = build_spec(v1, "old-copy", "ds1", {}, marker={MARK_KEY: "m"})
    assert spec.name == "old-copy" and spec.firmware == "bios" and not warnings
    assert skipped == ["VirtualVmxnet3 on 'VM Network': network not on target host"]
    assert [o.key for o in spec.extraConfig] == [MARK_KEY]
    assert spec.bootOptions is None and spec.cpuAllocation is None


def test_keep_identity_keeps_macs():
    from vmkeep.vsphere.vmconfig import NewVmOptions, build_spec

    config = {"format": "vmkeep.vmconfig", "version": 2, "controllers": [], "disks": [],
              "nics": [{"type": "VirtualVmxnet3", "network": "n", "mac": "00:50:56:01:02:03"}]}
    nets = {"n": vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="n")}
    for keep, want in ((True, ("manual", "00:50:56:01:02:03")), (False, ("generated", None))):
        spec, _, _ = build_spec(config, "x", "ds", nets, options=NewVmOptions(keep_identity=keep))
        nic = spec.deviceChange[0].device
        assert (nic.addressType, nic.macAddress) == want
