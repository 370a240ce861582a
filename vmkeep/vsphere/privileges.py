"""The vSphere role vmkeep needs — the one list of its privileges — and which of them a session
lacks.

:data:`ROLE` maps each privilege id to why vmkeep needs it and on which kind of object it is
checked (``root``: the root folder, i.e. vCenter-wide; ``datastore``; ``vm``).  ``vmkeep doctor
--print-role`` prints :func:`role_document`; ``docs/real-vsphere.md`` ("Privileges") says how to
create the role from it.  vCenter adds ``System.Anonymous``, ``System.View`` and ``System.Read``
to every role by itself; they are not listed.

:func:`missing_privileges` asks ``AuthorizationManager.HasPrivilegeOnEntities`` for the current
session (one call for every entity and privilege) and returns, per privilege not granted, the
entities lacking it.  Read-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmkeep.vsphere.connection import Session

ROLE_NAME = "vmkeep-backup"
#: entities per HasPrivilegeOnEntities call
BATCH = 200

#: privilege id -> (object kind it is checked on, why vmkeep needs it)
ROLE: dict[str, tuple[str, str]] = {
    "Datastore.Browse": ("datastore", "read disk files over HTTPS (/folder), browse datastores"),
    "Datastore.FileManagement": ("datastore", "write restored disks, remove half-restored files"),
    "Datastore.AllocateSpace": ("datastore", "restore: create VMs and disks"),
    "VirtualMachine.Provisioning.DiskRandomRead": (
        "vm", "QueryChangedDiskAreas: changed-block tracking incrementals, quick rollback"),
    "VirtualMachine.Provisioning.DiskRandomAccess": ("vm", "hot-add and NFC disk access"),
    "VirtualMachine.Provisioning.GetVmFiles": ("vm", "download VM files (NFC export)"),
    "VirtualMachine.Provisioning.PutVmFiles": ("vm", "upload VM files (restore)"),
    "VirtualMachine.State.CreateSnapshot": ("vm", "the backup snapshot"),
    "VirtualMachine.State.RemoveSnapshot": ("vm", "remove the backup snapshot, sweep leftovers"),
    "VirtualMachine.Config.ChangeTracking": (
        "vm", "turn changed-block tracking on; reset it after a quick rollback"),
    "VirtualMachine.Config.DiskLease": ("vm", "disk leases (NFC, hot-add)"),
    "VirtualMachine.Config.AddExistingDisk": (
        "vm", "hot-add: attach a snapshot's disk, or (quick rollback) a powered-off VM's own"),
    "VirtualMachine.Config.RemoveDisk": (
        "vm", "hot-add: detach it again; restore disk --replace: detach the replaced disk"),
    "VirtualMachine.Config.AddNewDisk": ("vm", "restore: create disks"),
    "VirtualMachine.Config.Settings": ("vm", "restore: VM settings, extraConfig"),
    "VirtualMachine.Config.AdvancedConfig": ("vm", "restore: advanced settings"),
    "VirtualMachine.Config.Rename": (
        "vm", "restore vm --overwrite: set the replaced VM aside until its replacement is in"),
    "VirtualMachine.GuestOperations.Query": ("vm", "guest scripts and file restores: state"),
    "VirtualMachine.GuestOperations.Execute": ("vm", "pre-freeze / post-thaw scripts"),
    "VirtualMachine.GuestOperations.Modify": ("vm", "restore files into the guest"),
    "VirtualMachine.Inventory.Create": ("vm", "restore vm: create the VM"),
    "VirtualMachine.Inventory.Delete": (
        "vm", "remove a half-restored VM, or the VM restore vm --overwrite replaced"),
    "VirtualMachine.Inventory.Register": ("vm", "register a restored VM"),
    "VirtualMachine.Interact.PowerOn": ("vm", "restore --power-on, boot verification"),
    "VirtualMachine.Interact.PowerOff": (
        "vm", "power off a verification VM, or a VM restore vm --overwrite replaces"),
    "VApp.Export": ("vm", "ExportVm / ExportSnapshot (nfc transport)"),
    "VApp.Import": ("root", "ImportVApp (NFC restore)"),
    "Resource.AssignVMToPool": ("root", "restore: place the VM in a resource pool"),
    "Network.Assign": ("root", "restore: connect the VM's network adapters"),
    "InventoryService.Tagging.AttachTag": (
        "root", "restore vm: attach the VM's vSphere tags again (original name or --tags)"),
    "Global.DisableMethods": ("root", "block migrations of a VM during its backup"),
    "Global.EnableMethods": ("root", "unblock them afterwards"),
    "Global.Licenses": ("root", "read the vSphere licence (free ESXi refuses API writes)"),
    "Sessions.ValidateSession": ("root", "keep-alive: check the session is valid"),
}


def role_document() -> dict[str, Any]:
    """The role as JSON: name, description, sorted privilege ids, and why each is needed."""
    return {
        "name": ROLE_NAME,
        "description": "vmkeep backup and restore (see docs/real-vsphere.md, Privileges)",
        "privileges": sorted(ROLE),
        "why": {p: why for p, (_, why) in sorted(ROLE.items())},
    }


@dataclass
class Missing:
    """A privilege the session lacks, and where."""

    privilege: str
    why: str
    entities: list[str] = field(default_factory=list)  # "VirtualMachine:vm-42"

    def to_json(self) -> dict[str, Any]:
        return {"privilege": self.privilege, "why": self.why, "entities": self.entities}


def missing_privileges(
    session: Session,
    *,
    datastores: Sequence[Any] = (),
    vms: Sequence[Any] = (),
    privileges: Iterable[str] | None = None,
) -> list[Missing]:
    """Privileges of :data:`ROLE` (or ``privileges``) not granted to this session on the root
    folder, the given datastores or the given VMs (by each privilege's kind)."""
    wanted = sorted(privileges if privileges is not None else ROLE)
    by_kind: dict[str, list[str]] = {}
    for p in wanted:
        by_kind.setdefault(ROLE.get(p, ("root", ""))[0], []).append(p)
    content = session.content
    key = session.call(
        lambda: content.sessionManager.currentSession.key, idempotent=True, what="session key"
    )
    found: dict[str, Missing] = {}
    targets = {"root": [content.rootFolder], "datastore": list(datastores), "vm": list(vms)}
    answers: list[Any] = []
    for kind, privs in by_kind.items():
        entities = targets[kind] or [content.rootFolder]
        for start in range(0, len(entities), BATCH):
            answers += session.call(
                content.authorizationManager.HasPrivilegeOnEntities,
                entities[start : start + BATCH], key, privs,
                idempotent=True, what="HasPrivilegeOnEntities",
            ) or []
    for ent in answers:
        for avail in ent.privAvailability or []:
            if avail.isGranted:
                continue
            miss = found.setdefault(
                avail.privId, Missing(avail.privId, ROLE.get(avail.privId, ("", ""))[1])
            )
            kind = type(ent.entity).__name__.split(".")[-1]
            miss.entities.append(f"{kind}:{ent.entity._moId}")
    return [found[p] for p in wanted if p in found]
