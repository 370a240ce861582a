"""Which transport reads a disk, decided once from the datastore's type: the rule of
``--transport auto`` (issue #14) as ``vmkeep doctor`` reports it per datastore.

* ``hotadd`` when vmkeep runs in a data-mover VM whose host mounts the datastore (any type);
* else ``nfc`` (ExportSnapshot leases streaming streamOptimized VMDKs) for vSAN and vVol
  datastores: their disks are objects (``vsan://``, ``vvol://``) without flat files;
* else ``https`` (datastore ``/folder`` range reads of the flat extent files): VMFS, NFS and
  every other type — a backup falls back to ``nfc`` when ``/folder`` refuses a disk.

The backup path's ``--transport auto`` (:func:`vmkeep.vsphere.transport_choice.choose`) applies
this same function, so doctor and a backup never disagree.  Pure; every answer carries its
reason.
"""

from __future__ import annotations

from dataclasses import dataclass

#: datastore types (``summary.type``, compared lower-case) whose disks are objects, not files
OBJECT_TYPES = frozenset({"vsan", "vvol"})


@dataclass(frozen=True)
class TransportChoice:
    transport: str  # hotadd | https | nfc
    reason: str


def auto_transport(datastore_type: str, *, mover_sees_datastore: bool = False) -> TransportChoice:
    """The transport for a disk on a datastore of ``datastore_type`` (``summary.type``)."""
    kind = datastore_type or "unknown"
    if mover_sees_datastore:
        return TransportChoice("hotadd", f"the mover VM's host mounts this {kind} datastore")
    if kind.lower() in OBJECT_TYPES:
        return TransportChoice("nfc", f"{kind}: disks are objects without flat files; NFC export")
    return TransportChoice("https", f"{kind}: flat extent files, range reads over HTTPS")
