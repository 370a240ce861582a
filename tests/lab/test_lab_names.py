"""VM names in the lab are unique per folder, as vSphere keeps them.

"A folder cannot contain virtual machines with identical names" (vSphere's VM administration
guide); ``CreateVM_Task``, ``RegisterVM_Task``, ``ImportVApp``, ``MoveIntoFolder_Task`` and
``Rename_Task`` answer ``DuplicateName`` there.  Stock vcsim made a second VM of the name in the
same folder, moved a VM into a folder holding its name, and answered a rename onto a taken name
with ``InvalidArgument``.  Another folder may hold the same name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from tests.lab.lab_helpers import lab_datacenter, wait

pytestmark = pytest.mark.lab


def _spec(name: str) -> Any:
    return vim.vm.ConfigSpec(name=name, guestId="otherLinux64Guest", memoryMB=128, numCPUs=1,
                             files=vim.vm.FileInfo(vmPathName="[datastore1]"))


@pytest.fixture
def place(si: Any) -> Iterator[tuple[Any, Any, Any, list[Any]]]:
    """(root VM folder, a subfolder, the host, VMs to destroy afterwards)."""
    dc = lab_datacenter(si)
    host = next(h for c in dc.hostFolder.childEntity for h in c.host)
    sub = dc.vmFolder.CreateFolder("names-sub")
    made: list[Any] = []
    try:
        yield dc.vmFolder, sub, host, made
    finally:
        for vm in made:
            with contextlib.suppress(Exception):
                WaitForTask(vm.Destroy_Task())
        with contextlib.suppress(Exception):
            WaitForTask(sub.Destroy_Task())


def _create(folder: Any, host: Any, name: str, made: list[Any]) -> Any:
    vm = wait(folder.CreateVM_Task(_spec(name), host.parent.resourcePool, host))
    made.append(vm)
    return vm


def test_a_name_taken_in_the_folder_is_refused_with_duplicate_name(place) -> None:
    root, _, host, made = place
    first = _create(root, host, "names-one", made)

    task = root.CreateVM_Task(_spec("names-one"), host.parent.resourcePool, host)
    with pytest.raises(vim.fault.DuplicateName) as refused:
        WaitForTask(task)

    assert refused.value.name == "names-one" and refused.value.object._moId == first._moId
    assert refused.value.msg == "The name 'names-one' already exists."
    assert task.info.state == "error" and task.info.descriptionId == "Folder.createVm"
    assert [vm.name for vm in root.childEntity].count("names-one") == 1


def test_another_folder_may_hold_the_same_name(place) -> None:
    root, sub, host, made = place
    first = _create(root, host, "names-two", made)
    second = _create(sub, host, "names-two", made)

    assert second._moId != first._moId and second.parent._moId == sub._moId
    assert first.name == second.name == "names-two"
    # each keeps its own files, in folders of their own on the datastore
    assert first.config.files.vmPathName != second.config.files.vmPathName


def test_a_rename_onto_a_taken_name_is_refused_and_changes_nothing(place) -> None:
    root, sub, host, made = place
    _create(root, host, "names-three", made)
    other = _create(root, host, "names-four", made)
    _create(sub, host, "names-five", made)

    with pytest.raises(vim.fault.DuplicateName) as refused:
        WaitForTask(other.Rename_Task("names-three"))
    assert refused.value.msg == "The name 'names-three' already exists."
    assert other.name == "names-four"

    WaitForTask(other.Rename_Task("names-five"))  # held in another folder only: allowed
    assert other.name == "names-five"


def test_an_import_onto_a_taken_name_is_refused(place) -> None:
    root, _, host, made = place
    _create(root, host, "names-six", made)
    spec = vim.vm.VmImportSpec(configSpec=_spec("names-six"))

    with pytest.raises(vim.fault.DuplicateName) as refused:
        host.parent.resourcePool.ImportVApp(spec, root, host)

    assert refused.value.msg == "The name 'names-six' already exists."
    assert [vm.name for vm in root.childEntity].count("names-six") == 1


def test_a_move_into_a_folder_holding_the_name_is_refused_and_moves_nothing(place) -> None:
    root, sub, host, made = place
    _create(root, host, "names-eight", made)
    mover = _create(sub, host, "names-eight", made)
    other = _create(sub, host, "names-nine", made)

    with pytest.raises(vim.fault.DuplicateName) as refused:
        WaitForTask(root.MoveIntoFolder_Task([other, mover]))
    assert refused.value.msg == "The name 'names-eight' already exists."
    assert mover.parent._moId == sub._moId and other.parent._moId == sub._moId

    WaitForTask(root.MoveIntoFolder_Task([other]))  # a name the folder does not hold
    assert other.parent._moId == root._moId


def test_registering_a_vm_under_a_taken_name_is_refused(place) -> None:
    root, _, host, made = place
    gone = _create(root, host, "names-ten", made)
    vmx = gone.config.files.vmPathName
    gone.UnregisterVM()
    made.remove(gone)
    _create(root, host, "names-ten", made)

    task = root.RegisterVM_Task(vmx, "names-ten", False, host.parent.resourcePool, host)
    with pytest.raises(vim.fault.DuplicateName):
        WaitForTask(task)
    assert task.info.descriptionId == "Folder.registerVm"
    assert [vm.name for vm in root.childEntity].count("names-ten") == 1


def test_the_lab_finds_the_other_vm_of_a_name_once_one_is_gone(esx_lab, place) -> None:
    """The lab's admin API addresses VMs by name; when the VM it knew under a name is destroyed,
    the other folder's VM of that name is the one it answers for."""
    root, sub, host, made = place
    _create(root, host, "names-seven", made)
    last = _create(sub, host, "names-seven", made)  # the one the lab knows by the name
    WaitForTask(last.Destroy_Task())
    made.remove(last)

    assert "names-seven" in [v["name"] for v in esx_lab.client.status()["lab"]["vms"]]
