"""ESX-like snapshot semantics: frozen point-in-time disks, deltas, consolidation, quiesce."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.lab.lab_helpers import (
    find_vm,
    flat_name,
    folder_get,
    remove_all_snapshots,
    sha,
    snapshot,
    vdisks,
    wait,
)

pytestmark = pytest.mark.lab


@pytest.fixture()
def linux01(si):
    vm = find_vm(si, "linux01")
    remove_all_snapshots(vm)
    yield vm
    remove_all_snapshots(vm)


def test_snapshot_freezes_disk_and_vm_runs_on_delta(esx_lab, linux01):
    vm = linux01
    before = esx_lab.read_disk("linux01", 0)
    snap = snapshot(vm, "backup-1")
    [d0, d1] = vdisks(snap.config)
    assert d0.backing.fileName == "[datastore1] linux01/linux01.vmdk"
    assert d1.backing.fileName == "[datastore1] linux01/linux01_1.vmdk"
    cur = vdisks(vm.config)[0].backing
    assert cur.fileName == "[datastore1] linux01/linux01-000001.vmdk"
    assert cur.parent.fileName == "[datastore1] linux01/linux01.vmdk"
    assert cur.deltaDiskFormat == "redoLogFormat"
    delta_desc = (esx_lab.datastore_dir("datastore1") / "linux01/linux01-000001.vmdk").read_text()
    assert (
        'createType="vmfsSparse"' in delta_desc
        and 'parentFileNameHint="linux01.vmdk"' in delta_desc
    )
    assert os.path.exists(
        os.path.join(esx_lab.datastore_dir("datastore1"), "linux01/linux01-000001-delta.vmdk")
    )
    assert vm.snapshot.currentSnapshot == snap
    assert [s.name for s in vm.snapshot.rootSnapshotList] == ["backup-1"]

    frozen = folder_get(esx_lab, flat_name(d0.backing.fileName))
    assert sha(frozen) == sha(before)
    esx_lab.write("linux01", 5, seed=11)
    after = esx_lab.read_disk("linux01", 0)
    assert sha(after) != sha(before)
    # The snapshot's bytes do not change: via /folder, via the local path and via the admin API.
    assert sha(folder_get(esx_lab, flat_name(d0.backing.fileName))) == sha(before)
    local = os.path.join(esx_lab.datastore_dir("datastore1"), "linux01/linux01-flat.vmdk")
    assert sha(Path(local).read_bytes()) == sha(before)
    assert sha(esx_lab.read_disk("linux01", 0, snapshot="backup-1")) == sha(before)

    # Layout lists the delta and the snapshot.
    names = [f.name for f in vm.layoutEx.file]
    assert "[datastore1] linux01/linux01-000001-delta.vmdk" in names
    assert vm.layoutEx.snapshot[0].key == snap

    # RemoveSnapshot + WaitForTask: no server panic, the delta is consolidated.
    wait(snap.RemoveSnapshot_Task(removeChildren=False))
    assert vm.snapshot is None
    assert vdisks(vm.config)[0].backing.fileName == "[datastore1] linux01/linux01.vmdk"
    assert vdisks(vm.config)[0].backing.parent is None
    assert not os.path.exists(
        os.path.join(esx_lab.datastore_dir("datastore1"), "linux01/linux01-000001-delta.vmdk")
    )
    assert sha(Path(local).read_bytes()) == sha(after)
    assert sha(esx_lab.read_disk("linux01", 0)) == sha(after)


def test_snapshot_chain_and_removal_order(esx_lab, si):
    vm = find_vm(si, "db01")
    remove_all_snapshots(vm)
    home = esx_lab.datastore_dir("datastore2") / "db01"
    s1 = snapshot(vm, "s1")
    esx_lab.write("db01", 5, seed=1)
    state1 = esx_lab.read_disk("db01", 0)
    s2 = snapshot(vm, "s2")
    esx_lab.write("db01", 5, seed=2)
    state2 = esx_lab.read_disk("db01", 0)
    assert vdisks(s2.config)[0].backing.fileName == "[datastore2] db01/db01-000001.vmdk"
    assert vdisks(s2.config)[0].backing.parent.fileName == "[datastore2] db01/db01.vmdk"
    assert vdisks(vm.config)[0].backing.fileName == "[datastore2] db01/db01-000002.vmdk"
    assert sha(esx_lab.read_disk("db01", 0, snapshot="s2")) == sha(state1)
    assert s1.childSnapshot == [s2]

    # The delta chain is readable as ESX writes it (dissect's VMDK reader follows parents).
    from dissect.hypervisor.disk.vmdk import VMDK

    v = VMDK(home / "db01-000001.vmdk")
    assert sha(v.read(32 << 20)) == sha(state1)

    # Removing the older snapshot merges its child delta into the base; s2 stays readable.
    wait(s1.RemoveSnapshot_Task(removeChildren=False))
    assert [s.name for s in vm.snapshot.rootSnapshotList] == ["s2"]
    assert vdisks(s2.config)[0].backing.fileName == "[datastore2] db01/db01.vmdk"
    assert sha(esx_lab.read_disk("db01", 0, snapshot="s2")) == sha(state1)
    assert sha(esx_lab.read_disk("db01", 0)) == sha(state2)
    assert sha(VMDK(home / "db01-000002.vmdk").read(32 << 20)) == sha(state2)
    wait(s2.RemoveSnapshot_Task(removeChildren=False))
    assert vm.snapshot is None
    assert sha(esx_lab.read_disk("db01", 0)) == sha(state2)
    assert sha((home / "db01-flat.vmdk").read_bytes()) == sha(state2)
    assert [f for f in os.listdir(home) if "-00000" in f] == []


def test_independent_disk_not_snapshotted(esx_lab, si):
    vm = find_vm(si, "db01")
    remove_all_snapshots(vm)
    snap = snapshot(vm, "x")
    try:
        cur = vdisks(vm.config)
        assert cur[0].backing.fileName.endswith("db01-000001.vmdk")
        assert cur[1].backing.fileName == "[datastore2] db01/db01_1.vmdk"
        assert cur[1].backing.diskMode == "independent_persistent"
    finally:
        wait(snap.RemoveSnapshot_Task(False))


def test_quiesced_snapshot_records_freeze_and_thaw(esx_lab, si):
    vm = find_vm(si, "small01")
    snap = snapshot(vm, "q", quiesce=True)
    try:
        assert vm.snapshot.rootSnapshotList[0].quiesced is True
        events = esx_lab.client.guest_log("small01")["quiesce"]
        assert [e["event"] for e in events[-2:]] == ["freeze", "thaw"]
    finally:
        wait(snap.RemoveSnapshot_Task(False))
