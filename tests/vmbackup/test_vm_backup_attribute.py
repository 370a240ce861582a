"""The last backup in a VM's custom attribute (``VMKEEP_VM_ATTRIBUTE``) on the lab: created once,
replaced by each backup (one value, not one per night), and a refusal is a warning — never a
failed backup."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.vmbackup.vmbackup_helpers import lab_session
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.vsphere import inventory
from vmkeep.vsphere.attributes import field_key, vm_attribute
from vmkeep.vsphere.errors import VSphereError

pytestmark = pytest.mark.lab
VM = "small03"
NAME = "Last vmkeep backup"


def _values(lab: Any) -> list[str]:
    with lab_session(lab) as s:
        ref = next(v.ref for v in inventory.list_vms(s) if v.name == VM)
        key = next(f.key for f in s.content.customFieldsManager.field if f.name == NAME)
        return [v.value for v in ref.customValue if v.key == key]


def test_each_backup_replaces_the_vms_last_backup_attribute(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    monkeypatch.setenv("VMKEEP_VM_ATTRIBUTE", NAME)
    first = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    second = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    values = _values(lab)
    [value] = values  # replaced, not appended
    assert f"restore point {second['short_id']} (" in value and "-consistent), vmkeep, " in value
    assert first["short_id"] not in value
    with lab_session(lab) as s:
        ref = next(v.ref for v in inventory.list_vms(s) if v.name == VM)
        assert vm_attribute(s, ref, NAME) == value
    assert not [w for w in second["warnings"] if "custom attribute" in w]


def test_a_refused_attribute_is_a_warning_and_the_point_stands(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    monkeypatch.setenv("VMKEEP_VM_ATTRIBUTE", NAME)
    with lab.fault("soap_fault", "SetField", count=0, message="refused by the test"):
        summary = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    [warning] = [w for w in summary["warnings"] if "custom attribute" in w]
    assert warning.startswith(f"custom attribute {NAME!r} not set: ")
    assert summary["id"] and summary["snapshot_removed"]


def test_an_attribute_another_process_created_meanwhile_is_used(lab: Any) -> None:
    """Two backups create the attribute at once: the loser's ``AddCustomFieldDef`` answers
    ``DuplicateName`` (the lab, as vCenter) and it takes the definition the winner made."""
    from pyVmomi import vim

    name = "vmkeep race attribute"
    with lab_session(lab) as s:
        manager = s.content.customFieldsManager
        made = manager.AddFieldDefinition(name=name, moType=vim.VirtualMachine)
        try:
            real_call = s.call
            reads = []

            def first_read_misses_it(fn: Any, *args: Any, **kw: Any) -> Any:
                if kw.get("what") == "read custom attribute definitions" and not reads:
                    reads.append(1)
                    return []  # read before the other process created it
                return real_call(fn, *args, **kw)

            s.call = first_read_misses_it  # type: ignore[method-assign]
            assert field_key(s, name) == made.key and reads == [1]
            s.call = real_call  # type: ignore[method-assign]
            with pytest.raises(VSphereError) as taken:
                s.call(manager.AddCustomFieldDef, name=name, moType=vim.VirtualMachine,
                       what="create it again")
            assert taken.value.fault_type == "DuplicateName"
        finally:
            manager.RemoveCustomFieldDef(key=made.key)
