"""Faults switchable from tests: snapshot, quiesce, remove, session, datastore reads, hosts."""

from __future__ import annotations

import http.client
import time

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from tests.lab.lab_helpers import (
    find_vm,
    flat_name,
    remove_all_snapshots,
    snapshot,
    vm_file_get,
    wait,
)

pytestmark = pytest.mark.lab
# ruff: noqa: SIM117  (fault context, then the expected error: clearer nested)


@pytest.fixture()
def vm(si, esx_lab):
    vm = find_vm(si, "small03")
    remove_all_snapshots(vm)
    yield vm
    esx_lab.clear_faults()
    remove_all_snapshots(vm)


def test_snapshot_creation_fails(esx_lab, vm):
    with esx_lab.fault("snapshot_create", "small03"):
        with pytest.raises(vim.fault.SnapshotFault):
            snapshot(vm, "x")
    assert vm.snapshot is None
    snapshot(vm, "ok")  # count=1: the next one works
    assert vm.snapshot is not None


def test_quiesce_fails(esx_lab, vm):
    with esx_lab.fault("quiesce_fail", "small03"):
        with pytest.raises(vim.fault.ApplicationQuiesceFault):
            snapshot(vm, "q", quiesce=True)
    assert vm.snapshot is None
    assert esx_lab.client.guest_log("small03")["quiesce"][-1]["event"] == "fail"


def test_quiesce_times_out(esx_lab, vm):
    with esx_lab.fault("quiesce_timeout", "small03", delay=1.0):
        t0 = time.monotonic()
        task = vm.CreateSnapshot_Task("q", "", False, True)
        state = task.info.state
        # asynchronous: the task runs while the quiesce waits, or — on a machine loaded enough
        # that reading its state took the whole second — has failed by now, never earlier
        assert state in ("running", "queued") or (
            state == "error" and time.monotonic() - t0 >= 0.9
        ), state
        with pytest.raises(vim.fault.ApplicationQuiesceFault):
            WaitForTask(task)
        assert time.monotonic() - t0 >= 0.9
    assert vm.snapshot is None


def test_remove_snapshot_fails_once(esx_lab, vm):
    snap = snapshot(vm, "sticky")
    with esx_lab.fault("remove_snapshot", "small03", count=1):
        with pytest.raises(vim.fault.FileLocked):
            wait(snap.RemoveSnapshot_Task(False))
        assert vm.snapshot is not None
        wait(snap.RemoveSnapshot_Task(False))
    assert vm.snapshot is None


def test_a_slow_removal_holds_the_vm_s_other_snapshot_operations(esx_lab, vm):
    """As on ESX: while a removal (consolidation) runs, the VM's other snapshot operations fail
    with TaskInProgress, and the removal finishes on its own."""
    snap = snapshot(vm, "big-delta")
    with esx_lab.fault("remove_slow", "small03", count=1, delay=1.5):
        t0 = time.monotonic()
        task = snap.RemoveSnapshot_Task(False)
        with pytest.raises(vim.fault.TaskInProgress):
            wait(snap.RemoveSnapshot_Task(False))
        with pytest.raises(vim.fault.TaskInProgress):
            wait(vm.CreateSnapshot_Task("another", "", False, False))
        wait(task)
        assert time.monotonic() - t0 >= 1.4
    assert vm.snapshot is None
    wait(vm.CreateSnapshot_Task("after", "", False, False))  # free again
    wait(vm.snapshot.rootSnapshotList[0].snapshot.RemoveSnapshot_Task(False))


def test_session_expiry(esx_lab, si):
    mine = esx_lab.connect()
    assert mine.content.sessionManager.currentSession is not None
    esx_lab.client.expire_sessions()
    try:
        with pytest.raises(vim.fault.NotAuthenticated):
            find_vm(mine, "small03")
        mine.content.sessionManager.Login(esx_lab.user, esx_lab.password, None)
        assert find_vm(mine, "small03").name == "small03"
    finally:
        # Every session expired, the suite's shared one too: log it in again.
        si.content.sessionManager.Login(esx_lab.user, esx_lab.password, None)


def test_datastore_reads_slow_short_dropped(esx_lab, si):
    """small02 runs: its disk is read from its host (the faults apply there as on vCenter)."""
    d = esx_lab.vm("small02")["disks"][0]
    path = flat_name(d["datastore_path"])
    with esx_lab.fault("ds_slow", "small02", delay=1.0):
        t0 = time.monotonic()
        data = vm_file_get(esx_lab, si, "small02", path, 0, (1 << 20) - 1)
        assert len(data) == 1 << 20 and time.monotonic() - t0 >= 0.9
    with esx_lab.fault("ds_short", "small02", nbytes=4096):
        with pytest.raises(http.client.IncompleteRead):
            vm_file_get(esx_lab, si, "small02", path, 0, (1 << 20) - 1)
    with esx_lab.fault("ds_drop", "small02", nbytes=0):
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            vm_file_get(esx_lab, si, "small02", path, 0, (1 << 20) - 1)
    assert len(vm_file_get(esx_lab, si, "small02", path, 0, 4095)) == 4096


def test_soap_fault_on_method(esx_lab, vm):
    with esx_lab.fault("soap_fault", "CreateSnapshot_Task"):
        with pytest.raises(vmodl.fault.SystemError):
            vm.CreateSnapshot_Task("x", "", False, False)


def test_host_disconnect(esx_lab, si, vm):
    host = vm.runtime.host
    esx_lab.client.add_fault("host_disconnect", host.name)
    try:
        assert host.runtime.connectionState == "disconnected"
        assert vm.runtime.connectionState == "disconnected"
        with pytest.raises(vmodl.fault.HostNotConnected):
            snapshot(vm, "x")
    finally:
        esx_lab.client.clear_faults("host_disconnect")
    assert host.runtime.connectionState == "connected"
    snapshot(vm, "y")
