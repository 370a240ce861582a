"""The repository as the licence catalog: what is protected, by whom, and when.

Every restore point of kind ``vm`` stands for one image-protected guest on its ESX host; every
point of kind ``files`` for one file-level client.  Only headers are read (no chunk tables).
"""

from __future__ import annotations

from vmkeep.licensing.usage import ProtectedItem
from vmkeep.storage.repository import Repository


def catalog_items(repo: Repository) -> list[ProtectedItem]:
    items = []
    for point in repo.list_points():
        meta = point.meta
        if point.kind == "vm":
            items.append(
                ProtectedItem(
                    kind="vm",
                    machine=point.name,
                    time=point.time,
                    host=meta.get("host"),
                    vm_uuid=meta.get("instance_uuid"),
                    remote_device=meta.get("remote_device"),
                )
            )
        elif point.kind == "files":
            items.append(
                ProtectedItem(
                    kind="files", machine=str(meta.get("client") or point.name), time=point.time
                )
            )
    return items
