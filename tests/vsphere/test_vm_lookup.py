"""A new VM whose name vSphere finds taken in its folder is :class:`VMExists`, however late.

vmkeep checks the target folder before it creates a VM (``vm_lookup.check_name_free``), but
another client may take the name in between: vSphere then answers ``DuplicateName`` — from
``CreateVM_Task``'s task, or from ``ImportVApp`` itself — and the user gets the same typed error
(exit code 16, "choose another --name") as from the check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import vim

from vmkeep.vsphere import nfc_import, vm_lookup, vmconfig
from vmkeep.vsphere.connection import Session, connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import TaskFailed, VMExists, VSphereError, translate
from vmkeep.vsphere.tls import TLSOptions
from vmkeep.vsphere.waiter import wait_for_task

TAKEN = "lookup-taken"


def test_duplicate_name_from_a_task_or_a_call_is_vm_exists() -> None:
    failed = TaskFailed("CreateVM x", "DuplicateName: The name 'x' already exists.")
    failed.fault = vim.fault.DuplicateName(name="x")
    failed.fault_type = "DuplicateName"  # as the waiter sets them
    with (pytest.raises(VMExists, match="choose another --name, or --overwrite"),
          vm_lookup.taken_as_vm_exists("x")):
        raise failed
    with pytest.raises(VMExists) as refused, vm_lookup.taken_as_vm_exists("x", replaceable=False):
        raise translate(vim.fault.DuplicateName(msg="The name 'x' already exists.", name="x"),
                        "ImportVApp x")
    assert "--overwrite" not in refused.value.get_message()
    other = TaskFailed("CreateVM x", "InvalidDatastorePath: Invalid datastore path '[no]'.")
    with pytest.raises(TaskFailed), vm_lookup.taken_as_vm_exists("x"):
        raise other
    # the fault's type decides, not a message that mentions it
    with pytest.raises(VSphereError) as kept, vm_lookup.taken_as_vm_exists("x"):
        raise VSphereError("folder 'DuplicateName' not found")
    assert type(kept.value) is VSphereError


@pytest.fixture
def session(lab: Any) -> Iterator[tuple[Session, vmconfig.Placement]]:
    """A session, where a new VM goes (the first host, the root VM folder) and a VM there
    already called ``TAKEN``."""
    s = connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile))
    where = vmconfig.place(s, lab.hosts[0]["name"], None)
    spec = vim.vm.ConfigSpec(name=TAKEN, guestId="otherLinux64Guest", memoryMB=128, numCPUs=1,
                             files=vim.vm.FileInfo(vmPathName="[datastore1]"))
    taken = wait_for_task(s, where.folder.CreateVM_Task(spec, where.pool, where.host))
    try:
        yield s, where
    finally:
        with contextlib.suppress(Exception):
            wait_for_task(s, taken.Destroy_Task())


@pytest.mark.lab
def test_a_name_taken_after_the_check_is_vm_exists_from_create_and_import(
    session: tuple[Session, vmconfig.Placement], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, where = session
    with pytest.raises(VMExists, match="A VM named 'lookup-taken' already exists"):
        vm_lookup.check_name_free(s, TAKEN, where.folder)

    monkeypatch.setattr(vm_lookup, "check_name_free", lambda *a, **k: [])  # taken meanwhile
    config = {"format": vmconfig.FORMAT, "version": vmconfig.VERSION, "name": TAKEN,
              "guest_id": "otherLinux64Guest", "num_cpu": 1, "memory_mb": 128, "disks": [],
              "nics": [], "controllers": []}
    with pytest.raises(VMExists, match="already exists"):
        vmconfig.create_vm(s, config, TAKEN, where, "datastore1")
    spec = vmconfig.plan_new_vm(s, config, TAKEN, where, "datastore1",
                                vmconfig.NewVmOptions()).spec
    with pytest.raises(VMExists, match="already exists"):
        nfc_import.import_vm(s, where.pool, where.folder, where.host, spec)
    names = [vm_lookup.folder_path(s, p) for _, p in vm_lookup.vms_called(s, TAKEN)]
    assert names == ["/DC1/vm"]  # no second VM of the name was made
