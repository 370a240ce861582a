"""Job: back up a disk image file (raw or VMDK) into a repository.

Open repository → licence check (the image counts as one guest seat, by the image's identity,
see docs/licensing.md; refuses before the image is read) → shared lock → previous restore point
of ``name`` → back up the disk (one step; ``scan`` against the previous point, or ``cbt`` with a
changed-extents list) → commit the restore point (manifest last, recording the image's
identity) → release the lock.  ``storage_options`` take only non-secret fsspec options (a
secret is refused inside a Prefect run, a URL with a password always).  This is also how a data
mover backs up a disk from a datastore it mounts.
"""

from __future__ import annotations

import time
from typing import Any

from vmkeep.jobs import licence
from vmkeep.jobs.commit import commit
from vmkeep.jobs.specs import BackupImageSpec
from vmkeep.licensing.identity import image_id
from vmkeep.runtime.base import Runtime
from vmkeep.storage import target_space
from vmkeep.storage.change_rate import Written, change_warnings
from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import WORKLOAD_KEY, catalog_items
from vmkeep.tasks.image import back_up_image_disk, commit_restore_point
from vmkeep.tasks.source_credentials import refuse_secret_parameters


def backup_image(spec: BackupImageSpec, rt: Runtime) -> dict[str, Any]:
    """Back up ``spec.path`` as restore point ``spec.name``; returns the summary (CLI JSON)."""
    started = time.monotonic()
    refuse_secret_parameters(repo=spec.repo, storage_options=spec.storage_options)
    repository = Repository.open(spec.repo, spec.storage_options)
    licence.check(rt, images=[spec.path], catalog=catalog_items(repository))
    # shared lock from before the index is read until the manifest is written (prune waits)
    with repository.lock("shared") as lock:
        parent = repository.latest_point(spec.name)
        progress = rt.progress(f"image {spec.path}", 0)
        try:
            result = rt.step(
                back_up_image_disk,
                repository,
                spec.path,
                parent=parent,
                changed=spec.changed_extents,
                progress=progress.advance,
                exclude_swap=spec.exclude_swap,
                exclude_deleted=spec.exclude_deleted,
                step_name=f"disk 0 {spec.path}",
            )
        finally:
            progress.close()
        warnings = change_warnings(repository.list_points(spec.name),
                                   Written.of_results([result]))
        warnings += target_space.backup_warnings(repository)
        lock.ensure()
        point = commit(
            rt,
            commit_restore_point,
            spec.name,
            repository,
            spec.name,
            [result],
            parent=parent.id if parent else None,
            meta={"source": spec.path, WORKLOAD_KEY: image_id(spec.path),
                  **({"warnings": warnings} if warnings else {})},
        )
    stats = result.stats
    rt.log.info("image %s: restore point %s committed", spec.path, point.id)
    for warning in warnings:
        rt.log.warning("image %s: %s", spec.path, warning)
    summary = {
        "id": point.id,
        "short_id": point.short_id,
        "name": spec.name,
        "parent": point.parent,
        "mode": result.info.mode,
        "reason": result.info.reason,
        "size": result.info.size,
        "bytes_read": stats.bytes_read,
        "bytes_new": stats.bytes_new,
        "bytes_stored": stats.bytes_stored,
        "bytes_excluded": stats.bytes_excluded,
        "chunks": stats.chunks,
        "chunks_new": stats.chunks_new,
        "warnings": warnings,
        "duration_s": round(time.monotonic() - started, 3),
    }
    rt.publish_table(
        key="backup-image",
        rows=[summary],
        description=f"Image backup of {spec.path} as {spec.name}",
    )
    return summary
