"""Datastore free-space thresholds before a snapshot (:mod:`vmkeep.vsphere.datastore_space`):
the pure judgement, on hand-made summaries."""

from __future__ import annotations

import dataclasses

import pytest

from vmkeep.vsphere.datastore_space import DatastoreSpace, judge, snapshot_datastores
from vmkeep.vsphere.errors import DatastoreSpaceLow
from vmkeep.vsphere.inventory import VirtualDisk, VMInfo

GIB = 1 << 30


def _spaces(**free_percent: float) -> dict[str, DatastoreSpace]:
    return {name: DatastoreSpace(name, 500 * GIB, int(500 * GIB * pct / 100))
            for name, pct in free_percent.items()}


def test_below_the_skip_threshold_names_every_low_datastore() -> None:
    spaces = _spaces(ds1=4.0, ds2=2.0, ds3=50.0)
    with pytest.raises(DatastoreSpaceLow) as caught:
        judge("web01", spaces, ["ds1", "ds2", "ds3"], warn_percent=10, skip_percent=5)
    message = caught.value.get_message()
    assert message.startswith("VM web01 skipped, no snapshot taken: datastore ds1: 4.0 % free")
    assert "ds2: 2.0 % free (10.0 GiB of 500.0 GiB)" in message
    assert "ds3" not in message and "VMKEEP_DATASTORE_SKIP_FREE_PERCENT" in message
    assert caught.value.exit_code == 16


def test_between_the_thresholds_is_a_warning_and_above_is_nothing() -> None:
    spaces = _spaces(ds1=7.5, ds2=10.0, ds3=80.0)
    [warning] = judge("web01", spaces, ["ds1", "ds2", "ds3"], warn_percent=10, skip_percent=5)
    assert warning.startswith("datastore ds1: 7.5 % free")
    assert "below the warning threshold of 10 %" in warning


def test_zero_switches_a_threshold_off() -> None:
    spaces = _spaces(ds1=1.0)
    assert judge("vm", spaces, ["ds1"], warn_percent=0, skip_percent=0) == []
    [warning] = judge("vm", spaces, ["ds1"], warn_percent=10, skip_percent=0)
    assert "1.0 % free" in warning
    with pytest.raises(DatastoreSpaceLow):
        judge("vm", spaces, ["ds1"], warn_percent=0, skip_percent=5)


def test_unknown_capacity_inaccessible_and_unlisted_datastores_are_not_judged() -> None:
    spaces = {
        "nocap": DatastoreSpace("nocap", 0, 0),
        "gone": DatastoreSpace("gone", 500 * GIB, 0, accessible=False),
    }
    assert judge("vm", spaces, ["nocap", "gone", "unlisted"], warn_percent=10,
                 skip_percent=5) == []
    assert DatastoreSpace("nocap", 0, 0).free_percent is None


def _disk(key: int, datastore: str, mode: str = "persistent") -> VirtualDisk:
    return VirtualDisk(key=key, label=f"Hard disk {key}", capacity=GIB,
                       file_name=f"[{datastore}] vm/vm_{key}.vmdk", datastore=datastore,
                       thin=True, disk_mode=mode, change_id=None, controller_key=1000,
                       unit_number=key)


def test_the_snapshot_grows_on_each_snapshotted_disks_datastore_and_the_vms_home() -> None:
    vm = VMInfo(ref=None, moid="vm-1", name="vm", instance_uuid="u", bios_uuid=None,
                datacenter="DC0", folder="/DC0/vm", host=None, cluster=None,
                datastores=("home", "data", "indep"), power_state="poweredOn", template=False,
                guest_id=None, cbt_enabled=True, consolidation_needed=False,
                vmx_path="[home] vm/vm.vmx",
                disks=(_disk(1, "data"), _disk(2, "indep", "independent_persistent")))
    assert snapshot_datastores(vm) == ["data", "home"]
    moved = dataclasses.replace(vm, snapshot_dir="[scratch] vm-snapshots/")  # workingDir
    assert snapshot_datastores(moved) == ["data", "home", "scratch"]
