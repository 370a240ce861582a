"""Flow: restore one disk of a restore point to an image file — raw, or a VMDK.

``format="raw"``: ``target`` becomes a bit-identical raw image.  ``format="vmdk"``: a
monolithicFlat VMDK — ``NAME.vmdk`` (descriptor) plus ``NAME-flat.vmdk`` (the raw bytes, padded
to whole sectors), see :mod:`vmkeep.browse.vmdk_export`; upload both to a datastore, or convert
with ``qemu-img convert -O vmdk -o subformat=streamOptimized`` when one file is wanted.

Existing targets are replaced only with ``overwrite`` (regular files and symlinks only: a device
node, FIFO or directory is always refused); see :mod:`vmkeep.storage.disk_restore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vmkeep.browse.vmdk_export import flat_names, write_flat_descriptor
from vmkeep.errors import InputError, UsageError
from vmkeep.storage.disk_restore import check_target
from vmkeep.storage.repository import Repository
from vmkeep.tasks.image import restore_image_disk
from vmkeep.tasks.runtime import flow, step
from vmkeep.tasks.source_credentials import refuse_secret_parameters

FORMATS = ("raw", "vmdk")


@flow(name="restore-image", persist_result=False, log_prints=False)
def restore_image(
    repo: str,
    point: str,
    target: str,
    disk: int = 0,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    format: str = "raw",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write disk ``disk`` of restore point ``point`` to ``target`` (raw: bit-identical)."""
    if format not in FORMATS:
        raise UsageError(f"unknown image format {format!r} (one of {', '.join(FORMATS)})")
    started = time.monotonic()
    files = [target]
    data_file = target
    if format == "vmdk":
        target, data_file = flat_names(target)
        files = [target, data_file]
    for path in files:  # refuse before the repository is even opened
        check_target(path, overwrite)
    refuse_secret_parameters(repo=repo, storage_options=storage_options)
    repository = Repository.open(repo, storage_options)
    restore_point = repository.load_point(point)
    if disk not in restore_point.chunks:
        disks = ", ".join(str(d) for d in sorted(restore_point.chunks)) or "none"
        raise InputError(
            f"restore point {restore_point.id[:8]} has no disk {disk} (disks: {disks})"
        )
    size = step(
        restore_image_disk,
        repository,
        restore_point,
        disk,
        data_file,
        progress=progress,
        overwrite=overwrite,
    )
    if format == "vmdk":
        write_flat_descriptor(target, data_file, size)
    return {
        "id": restore_point.id,
        "disk": disk,
        "target": target,
        "format": format,
        "files": files,
        "bytes": size,
        "duration_s": round(time.monotonic() - started, 3),
    }
