"""The lab's hot-add model (esxsim/hotadd.go) as vSphere behaves: a snapshot's frozen disk
attaches to the mover read-only and shows up under its by-id folder with the frozen content;
locks, datastore visibility, unit numbers and "destroy" are refused with vSphere's faults."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests.lab.lab_helpers import find_vm, vdisks

pytestmark = pytest.mark.lab
SOURCE = "hot01"


def _wait(si: Any, task: Any) -> Any:
    from pyVim.task import WaitForTask

    WaitForTask(task, si=si)
    return task.info.result


@pytest.fixture
def mover(esx_lab: Any, si: Any) -> dict[str, Any]:
    [doc] = esx_lab.info.movers
    return {**doc, "vm": find_vm(si, doc["name"])}


@pytest.fixture
def snapshot(si: Any) -> Iterator[Any]:
    vm = find_vm(si, SOURCE)
    snap = _wait(si, vm.CreateSnapshot_Task("lab-hotadd", "", False, False))
    yield snap
    _wait(si, snap.RemoveSnapshot_Task(False))


def _add(mover_vm: Any, file_name: str, mode: str = "independent_nonpersistent", unit: int = 5,
         ) -> vim.vm.ConfigSpec:
    ctrl = next(d for d in mover_vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualSCSIController))
    disk = vim.vm.device.VirtualDisk(
        key=-1, controllerKey=ctrl.key, unitNumber=unit,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=file_name, diskMode=mode),
    )
    return vim.vm.ConfigSpec(deviceChange=[
        vim.vm.device.VirtualDeviceSpec(operation="add", device=disk)])


def _remove(dev: Any, destroy: bool = False) -> vim.vm.ConfigSpec:
    change = vim.vm.device.VirtualDeviceSpec(operation="remove", device=dev)
    if destroy:
        change.fileOperation = "destroy"
    return vim.vm.ConfigSpec(deviceChange=[change])


def _fails(si: Any, task: Any, fault: type) -> str:
    with pytest.raises(fault) as exc:
        _wait(si, task)
    return str(exc.value.msg)


def test_attach_read_detach(esx_lab: Any, si: Any, mover: dict[str, Any], snapshot: Any) -> None:
    frozen = vdisks(snapshot.config)[0]
    file_name = frozen.backing.fileName
    _wait(si, mover["vm"].ReconfigVM_Task(_add(mover["vm"], file_name)))
    [added] = [d for d in vdisks(mover["vm"].config) if d.backing.fileName == file_name]
    assert added.backing.diskMode == "independent_nonpersistent"
    device = Path(mover["device_dir"]) / ("scsi-3" + frozen.backing.uuid.replace("-", "").lower())
    assert device.read_bytes() == esx_lab.read_disk(SOURCE, 0, snapshot="lab-hotadd")
    assert not os.access(device, os.W_OK) or os.geteuid() == 0  # read-only (root ignores modes)
    assert oct(device.stat().st_mode & 0o777) == "0o444"

    # the frozen file is held: the snapshot cannot be consolidated, the file not destroyed
    msg = _fails(si, snapshot.RemoveSnapshot_Task(False), vim.fault.FileLocked)
    assert "consolidat" in msg
    _fails(si, mover["vm"].ReconfigVM_Task(_remove(added, destroy=True)), vim.fault.FileLocked)
    # attaching it twice is refused, as is a second disk on a used unit
    _fails(si, mover["vm"].ReconfigVM_Task(_add(mover["vm"], file_name, unit=6)),
           vim.fault.FileLocked)
    _wait(si, mover["vm"].ReconfigVM_Task(_remove(added)))
    assert not device.exists()
    assert all(d.backing.fileName != file_name for d in vdisks(mover["vm"].config))


def test_refusals(si: Any, mover: dict[str, Any], snapshot: Any) -> None:
    frozen = vdisks(snapshot.config)[0].backing.fileName
    active = vdisks(find_vm(si, SOURCE).config)[0].backing.fileName
    assert active != frozen
    vm = mover["vm"]
    # a persistent attach wants the write lock the running VM's chain holds
    _fails(si, vm.ReconfigVM_Task(_add(vm, frozen, "persistent")), vim.fault.FileLocked)
    # the running VM's current (active) delta is locked in any mode
    _fails(si, vm.ReconfigVM_Task(_add(vm, active)), vim.fault.FileLocked)
    # unit 0 holds the mover's own system disk
    _fails(si, vm.ReconfigVM_Task(_add(vm, frozen, unit=0)), vim.fault.InvalidDeviceSpec)
    # a datastore the mover's host (esx01) does not mount
    local = vdisks(find_vm(si, "local01").config)[0].backing.fileName
    msg = _fails(si, vm.ReconfigVM_Task(_add(vm, local)), vim.fault.InaccessibleDatastore)
    assert "esx03-local" in msg and mover["host"] in msg
    _fails(si, vm.ReconfigVM_Task(_add(vm, "[datastore1] nowhere/none.vmdk")),
           vim.fault.FileNotFound)
    assert len(vdisks(vm.config)) == 1


def test_extra_config_replaces_and_deletes(si: Any, mover: dict[str, Any]) -> None:
    vm = mover["vm"]

    def values() -> list[str]:
        return [o.value for o in vm.config.extraConfig if o.key == "vmkeep.test.key"]

    for value, want in (("a", ["a"]), ("b", ["b"]), ("", [])):
        spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="vmkeep.test.key",
                                                                     value=value)])
        _wait(si, vm.ReconfigVM_Task(spec))
        assert values() == want
