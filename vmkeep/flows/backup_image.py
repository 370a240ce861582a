"""Flow: back up a disk image file (raw or VMDK) into a repository.

DAG: open repository → licence check (the image counts as one guest seat, by the image's
identity, see docs/licensing.md; refuses before the image is read) → take a shared lock → find
the previous restore point of ``name`` → back up the disk (one task; ``scan`` against the
previous point, or ``cbt`` with a changed-extents list) → commit the restore point (manifest
last, recording the image's identity) → release the lock.
This is also how a data mover backs up a disk from a datastore it mounts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from vmkeep.licensing.identity import image_id
from vmkeep.storage.disk_backup import Extent
from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import WORKLOAD_KEY, catalog_items
from vmkeep.tasks.image import back_up_image_disk, commit_restore_point
from vmkeep.tasks.license_check import check_run
from vmkeep.tasks.runtime import flow, publish_table, step


@flow(name="backup-image", persist_result=False, log_prints=False)
def backup_image(
    repo: str,
    path: str,
    name: str,
    changed_extents: Sequence[Extent] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Back up ``path`` as restore point ``name``; returns the run summary (the CLI's JSON)."""
    started = time.monotonic()
    repository = Repository.open(repo, storage_options)
    check_run(images=[path], catalog=catalog_items(repository))
    changed = [tuple(e) for e in changed_extents] if changed_extents is not None else None
    # shared lock from before the index is read until the manifest is written (prune waits)
    with repository.lock("shared") as lock:
        parent = repository.latest_point(name)
        result = step(
            back_up_image_disk,
            repository,
            path,
            parent=parent,
            changed=changed,
            progress=progress,
        )
        lock.ensure()
        point = step(
            commit_restore_point,
            repository,
            name,
            [result],
            parent=parent.id if parent else None,
            meta={"source": path, WORKLOAD_KEY: image_id(path)},
        )
    stats = result.stats
    summary = {
        "id": point.id,
        "short_id": point.short_id,
        "name": name,
        "parent": point.parent,
        "mode": result.info.mode,
        "reason": result.info.reason,
        "size": result.info.size,
        "bytes_read": stats.bytes_read,
        "bytes_new": stats.bytes_new,
        "bytes_stored": stats.bytes_stored,
        "chunks": stats.chunks,
        "chunks_new": stats.chunks_new,
        "duration_s": round(time.monotonic() - started, 3),
    }
    publish_table(
        key="backup-image",
        table=[summary],
        description=f"Image backup of {path} as {name}",
    )
    return summary
