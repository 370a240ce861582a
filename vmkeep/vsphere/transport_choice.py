"""Which transport reads a disk: ``--transport auto`` (the default) decides per disk.

* ``hotadd`` — when this data mover is a VM on a host that sees the disk's datastore (the caller
  says so with ``hotadd``: the reason from :func:`vmkeep.vsphere.hotadd.hotadd_possible`, or
  ``vmkeep doctor``'s view of the mover's host);
* ``https`` — VMFS and NFS datastores: the flat files over ``/folder`` (range reads, CBT);
* ``nfc`` — vSAN and vVol datastores, whose disks are objects with no flat file (an NFC export
  lease streams each disk as a streamOptimized VMDK); virtual-mode raw device mappings, whose
  base is a LUN behind a mapping file (``VMFSRDM`` extent), not a file ``/folder`` or a mounted
  datastore serves — the host reads the LUN; also every other datastore type when ``/folder``
  refuses the disk (:func:`fallback`).

:func:`choose` is the one rule: ``vmkeep doctor`` reports per datastore what it answers, so a
backup and doctor never disagree.  An explicit ``--transport``
is used as asked (an object-backed disk then fails with
:class:`~vmkeep.vsphere.errors.ObjectBackedDisk`, which names ``nfc``).  The choice and its reason
are recorded per disk in the restore point (``transport`` in docs/format.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from vmkeep.vsphere.errors import DatastoreIOError, NotFound, ObjectBackedDisk, VSphereError

#: datastore types (``summary.type``) whose disks are objects, not files
OBJECT_TYPES = frozenset({"vsan", "vvol"})


@dataclass(frozen=True)
class Choice:
    transport: str  # https | direct | nfc | hotadd
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"version": 1, "name": self.transport, "reason": self.reason}


#: why ``auto`` reads a virtual-mode RDM through the host
VIRTUAL_RDM = "virtual-mode RDM: its base is a LUN, no file on the datastore"


def choose(
    requested: str, datastore_type: str | None, *, hotadd: str | None = None,
    virtual_rdm: bool = False,
) -> Choice:
    """The transport for one disk (see the module docstring); ``hotadd``: why this mover can
    hot-add the disk, or None when it cannot (not a mover VM, datastore not seen);
    ``virtual_rdm``: the disk is a virtual-mode raw device mapping."""
    kind = datastore_type or "unknown"
    if requested != "auto":
        return Choice(requested, f"--transport {requested}")
    if hotadd:
        return Choice("hotadd", hotadd)
    if virtual_rdm:
        return Choice("nfc", VIRTUAL_RDM)
    if kind.lower() in OBJECT_TYPES:
        return Choice("nfc", f"datastore type {kind}: disks are objects without flat files")
    return Choice("https", f"datastore type {kind}: flat files over /folder")


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
