"""Which transport reads a disk, decided once from the datastore's type: the rule of
``--transport auto`` (issue #14) and of ``vmkeep doctor``'s datastore table.

* ``hotadd`` when vmkeep runs in a data-mover VM whose host mounts the datastore (any type);
* else ``https`` (datastore ``/folder`` range reads) for VMFS and NFS datastores, which have
  flat extent files;
* else ``nfc`` (ExportSnapshot leases streaming streamOptimized VMDKs) for vSAN, vVol and
  anything unknown: they have no flat files.

Pure; every answer carries its reason (recorded in restore points, shown by doctor).
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``summary.type`` values with flat ``-flat.vmdk`` files readable over /folder
FLAT_FILE_TYPES = frozenset({"VMFS", "NFS", "NFS41"})


@dataclass(frozen=True)
class TransportChoice:
    transport: str  # hotadd | https | nfc
    reason: str


def auto_transport(datastore_type: str, *, mover_sees_datastore: bool = False) -> TransportChoice:
    """The transport for a disk on a datastore of ``datastore_type`` (``summary.type``)."""
    kind = datastore_type or "unknown"
    if mover_sees_datastore:
        return TransportChoice("hotadd", f"the mover VM's host mounts this {kind} datastore")
    if kind.upper() in FLAT_FILE_TYPES:
        return TransportChoice("https", f"{kind}: flat extent files, range reads over HTTPS")
    return TransportChoice("nfc", f"{kind}: no flat files (vsan:// / vvol:// objects); NFC export")
