"""The lab is as strict about CBT as ESX: tracking starts at a stun, "*" is wrong on NFS and when
snapshots existed at enable time, hardware version 4 has no CBT, and the ``cbt_lie`` fault."""

from __future__ import annotations

import pytest
from pyVmomi import vmodl

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
MiB = 1 << 20


@pytest.fixture()
def clean(si, esx_lab):
    """VMs these tests touch go back to: no snapshots, CBT off (what the backup tests expect)."""
    used: list = []

    def get(name):
        vm = find_vm(si, name)
        remove_all_snapshots(vm)
        enable_cbt(vm, False)
        used.append(vm)
        return vm

    yield get
    esx_lab.client.clear_faults("cbt_lie")
    for vm in used:
        remove_all_snapshots(vm)
        enable_cbt(vm, False)


def test_hardware_version_4_has_no_cbt(si):
    vm = find_vm(si, "old01")
    assert vm.config.version == "vmx-04"
    assert vm.capability.changeTrackingSupported is False
    with pytest.raises(vmodl.fault.NotSupported):
        enable_cbt(vm, True)
    assert not vm.config.changeTrackingEnabled
    assert find_vm(si, "linux01").capability.changeTrackingSupported is True


def test_tracking_starts_at_the_first_stun(esx_lab, clean):
    vm = clean("nfs01")
    enable_cbt(vm, True)
    assert vm.config.changeTrackingEnabled
    assert not vdisks(vm.config)[0].backing.changeId  # no ctk until a stun
    before = esx_lab.write("nfs01", at=(12 * MiB, 64 * 1024))
    s1 = snapshot(vm, "stun")
    cid = vdisks(s1.config)[0].backing.changeId
    assert cid and "/" in cid
    after = esx_lab.write("nfs01", at=(13 * MiB, 64 * 1024))
    s2 = snapshot(vm, "next")
    key = vdisks(vm.config)[0].key
    areas = changed_areas(vm, s2, key, cid)
    assert covered(after, areas) and not covered(before, areas)


def test_star_is_one_whole_disk_extent_on_nfs(clean):
    vm = clean("nfs01")
    enable_cbt(vm, True)
    s = snapshot(vm, "star")
    key = vdisks(vm.config)[0].key
    assert changed_areas(vm, s, key, "*") == [(0, 16 * MiB)]
    summary_type = vdisks(s.config)[0].backing.datastore.summary.type
    assert summary_type == "NFS"


def test_star_is_wrong_when_snapshots_existed_at_enable(esx_lab, clean):
    vm = clean("cbt01")
    key = vdisks(vm.config)[0].key
    enable_cbt(vm, True)
    s = snapshot(vm, "right")
    right = changed_areas(vm, s, key, "*")
    assert right and right[0][0] == 0  # the GPT is allocated
    remove_all_snapshots(vm)
    enable_cbt(vm, False)
    user = snapshot(vm, "user snapshot")  # someone else's snapshot while CBT gets enabled
    enable_cbt(vm, True)
    written = esx_lab.write("cbt01", at=(20 * MiB, 64 * 1024))
    s2 = snapshot(vm, "wrong")
    wrong = changed_areas(vm, s2, key, "*")
    assert covered(written, wrong)
    assert not covered([right[0]], wrong)  # the base disk's data is missing: "*" lies
    wait(user.RemoveSnapshot_Task(False))


def test_cbt_lie_omits_written_areas(esx_lab, clean):
    vm = clean("cbt01")
    key = vdisks(vm.config)[0].key
    enable_cbt(vm, True)
    s1 = snapshot(vm, "a")
    cid = vdisks(s1.config)[0].backing.changeId
    written = esx_lab.write("cbt01", at=(8 * MiB, 64 * 1024))
    s2 = snapshot(vm, "b")
    esx_lab.client.add_fault("cbt-lie", target="cbt01", count=1)
    assert changed_areas(vm, s2, key, cid) == []  # the lone area is omitted
    assert covered(written, changed_areas(vm, s2, key, cid))  # count=1: the truth again
