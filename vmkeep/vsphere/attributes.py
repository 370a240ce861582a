"""The last backup, written into a VM's custom attribute (Veeam's "set successful backup
details to this VM attribute"), so that the vSphere Client shows it beside the VM.

:func:`set_vm_attribute` finds the custom attribute definition ``name`` for virtual machines
(or a global one), creates it once when it is missing (``AddCustomFieldDef``, needs the
privilege Global.ManageCustomFields; a concurrent creator's ``DuplicateName`` is taken as
"it exists now"), then sets the VM's value (``SetField``, Global.SetCustomField on the VM),
which replaces the previous one.  Two SOAP calls after the first time; changes nothing but the
attribute.  Errors are :class:`~vmkeep.vsphere.errors.VSphereError`; the caller decides (a
backup turns them into a warning: the restore point is already committed).
"""

from __future__ import annotations

from typing import Any

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import VSphereError, is_fault


def field_key(session: Session, name: str, create: bool = True) -> int | None:
    """The key of custom attribute ``name`` for VMs (or global), created when missing and
    ``create``; ``None`` when missing and not created."""
    from pyVmomi import vim

    manager = session.content.customFieldsManager
    if manager is None:
        raise VSphereError("custom attributes: this server has no CustomFieldsManager")

    def find() -> int | None:
        fields = session.call(lambda: manager.field, idempotent=True,
                              what="read custom attribute definitions") or []
        for f in fields:
            if f.name == name and f.managedObjectType in (None, vim.VirtualMachine):
                return int(f.key)
        return None

    key = find()
    if key is not None or not create:
        return key
    try:
        made = session.call(manager.AddCustomFieldDef, name=name, moType=vim.VirtualMachine,
                            what=f"create custom attribute {name!r}")
        return int(made.key)
    except VSphereError as exc:
        if not is_fault(exc, "DuplicateName"):
            raise
    key = find()  # someone else created it meanwhile
    if key is None:
        raise VSphereError(f"custom attribute {name!r}: created elsewhere but not found")
    return key


def set_vm_attribute(session: Session, vm_ref: Any, name: str, value: str) -> None:
    """Set custom attribute ``name`` of ``vm_ref`` to ``value`` (creating the attribute)."""
    key = field_key(session, name)
    manager = session.content.customFieldsManager
    session.call(manager.SetField, entity=vm_ref, key=key, value=value, idempotent=True,
                 what=f"set custom attribute {name!r}")


def vm_attribute(session: Session, vm_ref: Any, name: str) -> str | None:
    """The VM's value of custom attribute ``name``; ``None`` when unset or undefined."""
    key = field_key(session, name, create=False)
    if key is None:
        return None
    values = session.call(lambda: vm_ref.customValue, idempotent=True,
                          what="read custom attributes") or []
    found = [v.value for v in values if int(v.key) == key]
    return found[-1] if found else None
