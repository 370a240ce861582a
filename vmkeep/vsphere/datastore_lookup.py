"""Which datastore a name means — names are unique per datacenter, not per vCenter.

vSphere keeps datastore names unique within a datacenter only ("The scope of a datastore is a
datacenter; the datastore is uniquely named within the datacenter", the ``Datastore`` object's
API reference): each datacenter's standalone ESXi hosts may bring their own local
``datastore1``.  A name given on the command line, or saved with a restore point, means the
datastore of that name *in the datacenter of the host or VM the work is for*, never the first
one of the name a vCenter-wide search meets — which may be another datacenter's, mounted
elsewhere, of another type and fullness.  Every lookup here takes that object (``near``: a
host, a VM, a vApp, a folder or the datacenter itself; the way up from a vApp's VM is
:func:`vmkeep.vsphere.inventory.inventory_parent`).

Read-only: every call is idempotent (retried on drops by the session).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import NotFound
from vmkeep.vsphere.inventory import datacenter_of, object_properties


def datastores_near(
    session: Session, near: Any, paths: Sequence[str] = ("name",)
) -> list[tuple[Any, dict[str, Any]]]:
    """``(ref, {path: value})`` of every datastore in ``near``'s datacenter (one property
    query); ``paths`` always includes ``name``."""
    from pyVmomi import vim

    wanted = ["name", *(p for p in paths if p != "name")]
    return object_properties(session, vim.Datastore, wanted, root=datacenter_of(session, near))


def find_datastore(session: Session, name: str, near: Any) -> Any | None:
    """The datastore called ``name`` in ``near``'s datacenter, or None."""
    return next((ref for ref, p in datastores_near(session, near) if p.get("name") == name),
                None)


def resolve_datastore(session: Session, name: str, near: Any) -> Any:
    """:func:`find_datastore`, or :class:`NotFound` naming the datacenter and its datastores."""
    found = datastores_near(session, near)
    for ref, p in found:
        if p.get("name") == name:
            return ref
    dc = session.get(datacenter_of(session, near), "name")
    names = ", ".join(sorted(str(p.get("name")) for _, p in found)) or "none"
    raise NotFound(f"datastore {name!r} in datacenter {dc} (it has: {names})")
