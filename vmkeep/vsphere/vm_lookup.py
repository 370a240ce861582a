"""Which VM a user means: by instance UUID, or by a name — unique per folder, not per vCenter.

vSphere keeps VM names unique within their folder only ("A folder cannot contain virtual
machines with identical names"; ``CreateVM_Task``, ``ImportVApp``, ``RegisterVM_Task`` and
``Rename_Task`` answer ``DuplicateName`` there): two teams' folders may each hold a ``web01``.
So a name given on the command line can mean several VMs, and every lookup here says what it
does then:

- :func:`resolve_vm` — a VM to read or change (back up, attach a disk to): its instanceUuid
  (survives renames and vMotion), else its name, which must then be unique in the vCenter —
  :class:`AmbiguousVM` names the folders and asks for the instance UUID;
- :func:`vm_to_replace` — the VM a restore with ``--overwrite`` sets aside: the one of that name
  in the folder the new VM goes to (the one whose name it takes), else the only one of that
  name; several elsewhere and none there is :class:`AmbiguousVM` (say ``--folder``);
- :func:`check_name_free` — before a VM is created: :class:`VMExists` if its folder holds the
  name (vSphere would refuse it), a warning naming the other folders' VMs of that name;
  :func:`taken_as_vm_exists` turns vSphere's own ``DuplicateName`` (a VM made meanwhile) into
  the same :class:`VMExists`;
- :func:`vm_by_moref` — a VM recorded by managed object id, if it still exists under the name.

Read-only: every call is idempotent (retried on drops by the session).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import AmbiguousVM, NotFound, VMExists, VSphereError, is_fault
from vmkeep.vsphere.inventory import (
    VM_PARENT_PATHS,
    VMInfo,
    find_vm,
    inventory_parent,
    list_vms,
    object_properties,
    parent_from,
)


def resolve_vm(session: Session, vm: str) -> VMInfo:
    """The VM ``vm`` names: by instanceUuid, else by a name no other VM has (see module doc).
    :class:`NotFound` if none; :class:`AmbiguousVM` if several VMs have the name."""
    try:
        return find_vm(session, vm)
    except NotFound:
        pass
    matches = [v for v in list_vms(session) if v.name == vm]
    if not matches:
        raise NotFound(f"VM {vm!r}")
    if len(matches) > 1:
        raise AmbiguousVM(len(matches), vm, _where(v.folder for v in matches),
                          "give the one you mean by its instance UUID")
    return matches[0]


def vms_called(session: Session, name: str) -> list[tuple[Any, Any]]:
    """``(VM, its parent folder — or its vApp, which holds VM names as a folder does)`` of
    every VM called ``name`` (plain name), inaccessible or orphaned ones included — one paged
    property query."""
    from pyVmomi import vim

    rows = object_properties(session, vim.VirtualMachine, ["name", *VM_PARENT_PATHS])
    return [(ref, parent_from(props, ref)) for ref, props in rows if props.get("name") == name]


def check_name_free(
    session: Session, name: str, folder: Any, *, replaceable: bool = True
) -> list[str]:
    """Raise :class:`VMExists` (saying ``--overwrite`` if ``replaceable``) if ``folder`` holds a
    VM called ``name``; else the warning naming VMs of that name in other folders (none:
    ``[]``)."""
    called = vms_called(session, name)
    if any(_same(parent, folder) for _, parent in called):
        raise VMExists(name, replaceable=replaceable)
    if not called:
        return []
    others = f"{len(called)} other VMs named {name!r} exist" if len(called) > 1 else \
        f"another VM named {name!r} exists"
    where = _where(folder_path(session, parent) for _, parent in called)
    return [f"{others} ({where}): VM names are unique per folder only — a backup selecting "
            "this name takes them all, a command naming one VM needs its instance UUID"]


@contextmanager
def taken_as_vm_exists(name: str, *, replaceable: bool = True) -> Iterator[None]:
    """Inside: vSphere's ``DuplicateName`` for the new VM ``name`` (a call's or a task's) is
    raised as :class:`VMExists` (saying ``--overwrite`` if ``replaceable``)."""
    try:
        yield
    except VSphereError as exc:
        if is_fault(exc, "DuplicateName"):
            raise VMExists(name, replaceable=replaceable) from None
        raise


def vm_to_replace(session: Session, name: str, folder: Any) -> Any:
    """The VM a restore of ``name`` into ``folder`` replaces (see module doc), or None when no
    VM has the name."""
    called = vms_called(session, name)
    here = [vm for vm, parent in called if _same(parent, folder)]
    if here:
        return here[0]
    if len(called) > 1:
        raise AmbiguousVM(len(called), name,
                          _where(folder_path(session, parent) for _, parent in called),
                          f"none in the target folder {folder_path(session, folder)}: give "
                          "--folder with the folder of the one to replace")
    return called[0][0] if called else None


def vm_by_moref(session: Session, moid: str, name: str) -> Any:
    """The VM whose managed object id is ``moid`` if it still exists and is called ``name``,
    else None."""
    return next((vm for vm, _ in vms_called(session, name) if vm._moId == moid), None) \
        if moid else None


def folder_path(session: Session, folder: Any) -> str:
    """``/DC1/vm/teamA``: a VM folder's path from its datacenter (what ``--folder`` takes)."""
    from pyVmomi import vim

    names: list[str] = []
    node = folder
    while node is not None:
        names.append(str(session.get(node, "name")))
        if isinstance(node, vim.Datacenter):
            break
        node = inventory_parent(session, node)
    return "/" + "/".join(reversed(names))


def _same(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a._moId == b._moId


def _where(folders: Any) -> str:
    listed = sorted(str(f) for f in folders)
    return "in " + ", ".join(listed)
