"""Which transport reads a disk: ``--transport auto`` (the default) decides per disk.

* ``hotadd`` — when this data mover is a VM on a host that sees the disk's datastore (hook:
  :data:`HOTADD_PROBE`, set by the hot-add transport; None means "not a mover VM");
* ``https`` — VMFS and NFS datastores: the flat files over ``/folder`` (range reads, CBT);
* ``nfc`` — vSAN and vVol datastores, whose disks are objects with no flat file (an NFC export
  lease streams each disk as a streamOptimized VMDK); also every other datastore type when
  ``/folder`` refuses the disk (:func:`fallback`).

The datastore-type rule itself is :func:`vmkeep.vsphere.transport_rule.auto_transport` (the one
``vmkeep doctor`` reports), so a backup and doctor never disagree.  An explicit ``--transport``
is used as asked (an object-backed disk then fails with
:class:`~vmkeep.vsphere.errors.ObjectBackedDisk`, which names ``nfc``).  The choice and its reason
are recorded per disk in the restore point (``transport`` in docs/format.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmkeep.vsphere.errors import DatastoreIOError, NotFound, ObjectBackedDisk, VSphereError
from vmkeep.vsphere.transport_rule import auto_transport

#: hot-add hook: ``probe(datastore_type, datastore_name) -> reason or None``; None = no hot-add
HOTADD_PROBE: Callable[[str | None, str], str | None] | None = None


@dataclass(frozen=True)
class Choice:
    transport: str  # https | direct | nfc | hotadd
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"version": 1, "name": self.transport, "reason": self.reason}


def choose(requested: str, datastore_type: str | None, datastore: str = "") -> Choice:
    """The transport for one disk (see the module docstring)."""
    if requested != "auto":
        return Choice(requested, f"--transport {requested}")
    if HOTADD_PROBE is not None:
        why = HOTADD_PROBE(datastore_type, datastore)
        if why:
            return Choice("hotadd", why)
    rule = auto_transport(datastore_type or "unknown")
    return Choice(rule.transport, rule.reason)


def fallback(requested: str, exc: VSphereError) -> Choice | None:
    """The choice after ``https`` could not open a disk: ``nfc`` under ``auto``, else None."""
    if requested != "auto":
        return None
    if isinstance(exc, ObjectBackedDisk):
        scheme = exc.args[1] if len(exc.args) > 1 else "datastore"
        return Choice("nfc", f"the descriptor names {scheme} objects, no flat file")
    if isinstance(exc, NotFound | DatastoreIOError):
        return Choice("nfc", f"/folder access refused ({exc.get_message()})")
    return None
