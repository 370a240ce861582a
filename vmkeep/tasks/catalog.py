"""The repository as the licence catalog: what is protected, by whom, and when.

Every restore point counts as the workload it protected (:mod:`vmkeep.licensing.identity`):

* kind ``vm``: its guest (``meta.instance_uuid``) on its ESX host (``meta.host``);
* kind ``files``: the machine it read, ``meta.workload`` (recorded since licence identities
  exist); older points: the URL host of ``meta.source``, else their ``client`` name;
* any other kind (``backup image``): the disk image, ``meta.workload``; older points: their
  source path.

Only headers are read (no chunk tables).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from vmkeep.licensing.identity import machine_id
from vmkeep.licensing.usage import ProtectedItem
from vmkeep.storage.repository import PointSummary, Repository

#: the restore-point meta key holding the workload identity the licence counted
WORKLOAD_KEY = "workload"


def _item(point: PointSummary) -> ProtectedItem | None:
    meta = point.meta
    workload = meta.get(WORKLOAD_KEY)
    workload = str(workload) if workload else None
    if point.kind == "vm":
        return ProtectedItem(
            kind="vm",
            machine=point.name,
            time=point.time,
            host=meta.get("host") or "(unknown host)",
            vm_uuid=meta.get("instance_uuid"),
            remote_device=meta.get("remote_device"),
            workload=workload,
        )
    if point.kind == "files":
        source = str(meta.get("source") or "")
        if workload is None and "://" in source and not source.startswith("file://"):
            workload = machine_id(urlsplit(source).hostname or "unknown")
        client = str(meta.get("client") or point.name)
        return ProtectedItem(kind="files", machine=client, time=point.time, workload=workload)
    source = str(meta.get("source") or point.name)
    return ProtectedItem(kind="image", machine=source, time=point.time, workload=workload)


def catalog_items(repo: Repository) -> list[ProtectedItem]:
    """One item per restore point of ``repo``."""
    return [item for item in map(_item, repo.list_points()) if item is not None]
