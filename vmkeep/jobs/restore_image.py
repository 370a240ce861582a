"""Job: restore one disk of a restore point to an image file — raw, or a VMDK.

``format="raw"``: ``target`` becomes a bit-identical raw image.  ``format="vmdk"``: a
monolithicFlat VMDK — ``NAME.vmdk`` (descriptor) plus ``NAME-flat.vmdk`` (the raw bytes, padded
to whole sectors), see :mod:`vmkeep.browse.vmdk_export`; upload both to a datastore, or convert
with ``qemu-img convert -O vmdk -o subformat=streamOptimized`` when one file is wanted.

Order: refuse an existing target (before the repository is even opened) → open the point → the
disk, one step named ``disk <n> to <target>`` → the VMDK descriptor.  Existing targets are
replaced only with ``overwrite`` (regular files and symlinks only: a device node, FIFO or
directory is always refused); see :mod:`vmkeep.storage.disk_restore`.  ``device``: the target
is a block device the disk is written into in place (checked before the repository is opened,
opened exclusively, at least the disk's size; not atomic — see
:func:`~vmkeep.storage.disk_restore.restore_disk_to_device`).  Target ``-``: the raw disk is
written to standard output, every byte in order (``restore_disk_to_stream``), only by a runtime
that owns the caller's standard output (``Runtime.owns_stdout``: not in a Prefect run, where it
would be a worker's log); refused before anything is read otherwise.
"""

from __future__ import annotations

import time
from typing import Any

from vmkeep.browse.vmdk_export import flat_names, write_flat_descriptor
from vmkeep.errors import InputError
from vmkeep.jobs.restore_common import byte_progress, open_point
from vmkeep.jobs.restore_specs import RestoreImageSpec
from vmkeep.jobs.specs import InvalidSpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.disk_restore import DiskTarget, check_target, refuse_inside_repository
from vmkeep.tasks.image import restore_image_disk


def restore_image(spec: RestoreImageSpec, rt: Runtime) -> dict[str, Any]:
    """Write disk ``spec.disk`` of ``spec.point`` to ``spec.target``; returns the summary."""
    started = time.monotonic()
    target = data_file = spec.target
    files = [target]
    disk_target = DiskTarget.parse(target, device=spec.device, overwrite=spec.overwrite)
    if spec.format == "vmdk":
        target, data_file = flat_names(target)
        files = [target, data_file]
        disk_target = DiskTarget("file", data_file, spec.overwrite)
        check_target(target, spec.overwrite)  # the descriptor
    if disk_target.kind == "stream" and not rt.owns_stdout:
        raise InvalidSpec(
            "restore image spec",
            "target - streams the disk to the standard output of the command that runs the "
            "job, and an orchestrated run has none of its caller's (run `vmkeep restore image "
            "POINT --to -`, without --prefect)",
        )
    for file in files:
        refuse_inside_repository(spec.repo, file)
    disk_target.check()  # refuse before the repository is even opened
    repository, point = open_point(spec)
    if spec.disk not in point.chunks:
        disks = ", ".join(str(d) for d in sorted(point.chunks)) or "none"
        raise InputError(f"restore point {point.id[:8]} has no disk {spec.disk} (disks: {disks})")
    with byte_progress(rt, f"disk {spec.disk} to {data_file}", point.chunks[spec.disk].size) as bar:
        size = rt.step(
            restore_image_disk,
            repository,
            point,
            spec.disk,
            disk_target,
            progress=bar.advance,
            step_name=f"disk {spec.disk} to {data_file}",
        )
    if spec.format == "vmdk":
        write_flat_descriptor(target, data_file, size)
    rt.log.info("restored disk %d of %s to %s (%d bytes)", spec.disk, point.short_id, target, size)
    summary = {
        "id": point.id,
        "disk": spec.disk,
        "target": target,
        "format": spec.format,
        "files": files,
        "bytes": size,
        "duration_s": round(time.monotonic() - started, 3),
    }
    rt.publish_table(
        "restore-image", [summary], f"Restore of disk {spec.disk} of {point.short_id} to {target}"
    )
    return summary
