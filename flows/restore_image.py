"""Flow: restore one disk (or every disk) of a restore point to raw image files."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vmkeep.storage.repository import Repository
from vmkeep.tasks.image import restore_image_disk
from vmkeep.tasks.runtime import flow, step


@flow(name="restore-image", persist_result=False, log_prints=False)
def restore_image(
    repo: str,
    point: str,
    target: str,
    disk: int = 0,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write disk ``disk`` of restore point ``point`` to ``target``, bit-identical."""
    started = time.monotonic()
    repository = Repository.open(repo, storage_options)
    restore_point = repository.load_point(point)
    size = step(restore_image_disk, repository, restore_point, disk, target, progress=progress)
    return {
        "id": restore_point.id,
        "disk": disk,
        "target": target,
        "bytes": size,
        "duration_s": round(time.monotonic() - started, 3),
    }
