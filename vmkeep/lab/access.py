"""The lab's extra users and vSphere tags (written into the spec; see ``esxsim/privileges.go``
and ``esxsim/tagging.go``).

* :data:`RESTRICTED_USER` holds every privilege except :data:`RESTRICTED_LACKS`; the lab answers
  its ``QueryChangedDiskAreas``, datastore browsing (``SearchDatastore*``, ``/folder`` reads) and
  new VMs with network adapters (``CreateVM_Task``, ``ImportVApp``: Network.Assign on the
  adapter's network) with NoPermission, and ``AuthorizationManager`` reports the three
  privileges as not granted.
* :data:`OPERATOR_USER` (a restore operator's account) holds every privilege except
  :data:`OPERATOR_LACKS`: it cannot take snapshots (``CreateSnapshot*``), remove a VM's disk
  (``ReconfigVM_Task`` removing a disk; ``esxsim/config_privileges.go``) nor attach tags (the
  vAPI answers 403; ``esxsim/tagging.go``).
  Their passwords are random per lab and reported in ``LabInfo.users``.
* :data:`LAB_TAGS` are attached through the vAPI tagging service; VMs the lab does not have
  (``n_small`` too low) are left out. ``backup-policy:unused`` is attached to nothing.
"""

from __future__ import annotations

import secrets
from typing import Any

RESTRICTED_USER = "backup-restricted@vsphere.local"
RESTRICTED_LACKS = ("VirtualMachine.Provisioning.DiskRandomRead", "Datastore.Browse",
                    "Network.Assign")
OPERATOR_USER = "restore-operator@vsphere.local"
OPERATOR_LACKS = ("VirtualMachine.State.CreateSnapshot", "VirtualMachine.Config.RemoveDisk",
                  "InventoryService.Tagging.AttachTag")

LAB_TAGS: tuple[dict[str, Any], ...] = (
    {"category": "backup-policy", "name": "gold", "vms": ["small05", "small06"]},
    {"category": "backup-policy", "name": "silver", "vms": ["small06"]},
    {"category": "backup-policy", "name": "unused", "vms": []},
    {"category": "env", "name": "prod", "vms": ["linux01", "win01"]},
)


def users() -> list[dict[str, Any]]:
    """The spec's ``users`` (fresh random passwords)."""
    return [
        {"name": name, "password": secrets.token_urlsafe(18), "lacks": list(lacks)}
        for name, lacks in ((RESTRICTED_USER, RESTRICTED_LACKS), (OPERATOR_USER, OPERATOR_LACKS))
    ]


def tags(vm_names: set[str]) -> list[dict[str, Any]]:
    """The spec's ``tags``, keeping only VMs the lab has."""
    return [dict(t, vms=[v for v in t["vms"] if v in vm_names]) for t in LAB_TAGS]
