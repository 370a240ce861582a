"""Changed-block tracking: changeIds on backings, QueryChangedDiskAreas, paging, "*", resets."""

from __future__ import annotations

import pytest
from pyVmomi import vim

from tests.lab.lab_helpers import (
    changed_areas,
    covered,
    enable_cbt,
    find_vm,
    remove_all_snapshots,
    snapshot,
    vdisks,
    wait,
)

pytestmark = pytest.mark.lab


@pytest.fixture()
def small02(si, esx_lab):
    vm = find_vm(si, "small02")
    remove_all_snapshots(vm)
    enable_cbt(vm, True)
    yield vm
    remove_all_snapshots(vm)
    esx_lab.client.set_qcda_page(2000)


def test_changed_areas_match_writes(esx_lab, small02):
    vm = small02
    key = vdisks(vm.config)[0].key
    s1 = snapshot(vm, "full")
    cid1 = vdisks(s1.config)[0].backing.changeId
    assert cid1 and "/" in cid1
    extents = esx_lab.write("small02", 10, seed=7)
    s2 = snapshot(vm, "incr")
    cid2 = vdisks(s2.config)[0].backing.changeId
    assert cid2 != cid1
    areas = changed_areas(vm, s2, key, cid1)
    assert covered(extents, areas)
    written = sum(n for _, n in extents)
    assert sum(n for _, n in areas) <= written + len(extents) * 2 * 64 * 1024
    # Outside the reported areas the two points in time are identical (CBT tells the truth).
    old = bytearray(esx_lab.read_disk("small02", 0, snapshot="full"))
    new = bytearray(esx_lab.read_disk("small02", 0, snapshot="incr"))
    for off, n in areas:
        old[off : off + n] = new[off : off + n]
    assert old == new
    # Nothing was written after s2: its own changeId reports no change.
    assert changed_areas(vm, s2, key, cid2) == []
    # Removing the older snapshot keeps the newer one's changeId and areas valid.
    wait(s1.RemoveSnapshot_Task(False))
    assert changed_areas(vm, s2, key, cid1) == areas


def test_star_returns_allocated_areas_and_paging(esx_lab, small02):
    vm = small02
    key = vdisks(vm.config)[0].key
    s = snapshot(vm, "star")
    areas = changed_areas(vm, s, key, "*")
    assert areas and areas[0][0] == 0  # the GPT is allocated
    total = sum(n for _, n in areas)
    assert 0 < total < 8 << 20
    esx_lab.client.set_qcda_page(1)
    info = vm.QueryChangedDiskAreas(s, key, 0, "*")
    assert len(info.changedArea) == 1 and info.startOffset == 0
    assert info.length < 8 << 20
    assert changed_areas(vm, s, key, "*") == areas


def test_cbt_reset_invalidates_old_change_ids(esx_lab, small02):
    vm = small02
    key = vdisks(vm.config)[0].key
    s1 = snapshot(vm, "a")
    cid = vdisks(s1.config)[0].backing.changeId
    wait(s1.RemoveSnapshot_Task(False))
    enable_cbt(vm, False)
    enable_cbt(vm, True)
    s2 = snapshot(vm, "b")
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(s2, key, 0, cid)
    assert changed_areas(vm, s2, key, "*")
    wait(s2.RemoveSnapshot_Task(False))


def test_disk_resize_resets_cbt(esx_lab, si):
    vm = find_vm(si, "small04")
    remove_all_snapshots(vm)
    enable_cbt(vm)
    s1 = snapshot(vm, "a")
    disk = vdisks(s1.config)[0]
    cid = disk.backing.changeId
    wait(s1.RemoveSnapshot_Task(False))
    dev = vdisks(vm.config)[0]
    dev.capacityInBytes = 12 << 20
    dev.capacityInKB = 12 << 10
    spec = vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev)]
    )
    wait(vm.ReconfigVM_Task(spec))
    assert vdisks(vm.config)[0].capacityInBytes == 12 << 20
    s2 = snapshot(vm, "b")
    try:
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(s2, disk.key, 0, cid)
    finally:
        wait(s2.RemoveSnapshot_Task(False))


def test_cbt_disabled_query_fails(si):
    vm = find_vm(si, "small03")
    remove_all_snapshots(vm)
    enable_cbt(vm, False)  # backups enable CBT by default: whatever ran before, off here
    s = snapshot(vm, "nocbt")
    try:
        assert vdisks(s.config)[0].backing.changeId in (None, "")
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(s, vdisks(s.config)[0].key, 0, "*")
    finally:
        wait(s.RemoveSnapshot_Task(False))
