"""The steps of image backups and restores: one step per disk (or per files selection out of an
image point), never per chunk.  No pyVmomi and no Prefect here: a local restore imports neither."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from vmkeep.disks.pread import ImageReader
from vmkeep.disks.restore_model import Ownership, refuse_ownership
from vmkeep.disks.vmdk.opener import open_disk
from vmkeep.errors import InputError
from vmkeep.runtime.base import NO_RETRY, step_def
from vmkeep.storage.disk_backup import DiskResult, Extent, backup_disk, commit_point, make_pread
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.rate_limit import source_reads
from vmkeep.storage.read_plan import BaseRef, image_plan
from vmkeep.storage.repository import Repository
from vmkeep.tasks.source_credentials import source_options

if TYPE_CHECKING:
    from vmkeep.storage.disk_restore import DiskTarget


@step_def("back-up-image-disk")
def back_up_image_disk(
    repo: Repository,
    path: str,
    *,
    index: int = 0,
    parent: RestorePoint | None = None,
    changed: Sequence[Extent] | None = None,
    sparse: bool = True,
    progress: Any = None,
    exclude_swap: bool = False,
    exclude_deleted: bool = False,
) -> DiskResult:
    """Back up the disk image at ``path`` (raw or VMDK) as disk ``index`` (``changed``: only
    these extents changed; one past the image's end is an :class:`~vmkeep.errors.InputError`:
    the list belongs to another disk); with
    ``exclude_swap`` the guest's swap (:func:`vmkeep.disks.swap.find_swap`) is recorded as
    zeros instead of read, and what was found is the disk's ``swap`` record; with
    ``exclude_deleted`` the free blocks of its NTFS, ext, XFS and Btrfs volumes
    (:func:`vmkeep.disks.deleted_blocks.find_deleted`; the image is taken to be at rest) the
    same, recorded as ``deleted``."""
    with open_disk(path) as image:
        size = image.size or 0
        past = max((offset + length for offset, length in changed or () if length), default=0)
        if past > size:
            raise InputError(f"{path}: the changed-extents list reaches byte {past}, past the "
                             f"image's end ({size} bytes): it is not this disk's list")
        parent_table = parent.chunks.get(index) if parent is not None else None
        allocated = image.allocated_extents() if sparse and parent_table is None else None
        plan = image_plan(  # the read plan of an image, decided here; storage executes it
            size, parent_table, changed=changed, allocated=allocated, disk_key=index,
            base_ref=BaseRef(parent.id, index) if parent is not None else None,
        )
        reader = ImageReader(image)
        extra: dict[str, Any] = {"source": path, "format": image.format}
        if exclude_swap:
            from vmkeep.disks import swap  # file-system readers: only when asked (start-up)

            scan = swap.find_swap(make_pread(cast(BinaryIO, reader)), size)
            plan = plan.without(scan.extents)
            extra["swap"] = scan.record()
        if exclude_deleted:
            from vmkeep.disks import deleted_blocks

            found = deleted_blocks.find_deleted(
                make_pread(cast(BinaryIO, reader)), size, repo.config.image_chunk_size
            )
            plan = plan.without([*plan.zeroed, *found.extents])
            extra["deleted"] = found.record()
        return backup_disk(
            repo,
            cast(BinaryIO, reader),
            size,
            index=index,
            name=path.rsplit("/", 1)[-1],
            parent=parent_table,
            plan=plan,
            progress=progress,
            extra=extra,
            read_limit=source_reads(),
        )


@step_def("commit-restore-point", NO_RETRY)
def commit_restore_point(
    repo: Repository,
    name: str,
    results: Sequence[DiskResult],
    kind: str = "image",
    parent: str | None = None,
    meta: dict[str, Any] | None = None,
) -> RestorePoint:
    """Publish the restore point (manifest last)."""
    return commit_point(repo, name, results, kind=kind, parent=parent, meta=meta)


@step_def("restore-image-disk")
def restore_image_disk(
    repo: Repository, point: RestorePoint, disk: int, target: DiskTarget, progress: Any = None
) -> int:
    """Write one disk of a restore point to ``target``: a raw image file (an existing regular
    file replaced only with its ``overwrite``; device nodes and other special files never), a
    block device in place, or a stream (see :class:`~vmkeep.storage.disk_restore.DiskTarget`)."""
    from vmkeep.storage import disk_restore  # the restore side only

    return disk_restore.restore_disk_to(repo, point, disk, target, progress=progress)


@step_def("restore-image-files")
def restore_image_files(
    repo: Repository,
    point: RestorePoint,
    selections: list[tuple[str, str]],
    target: str,
    overwrite: bool = False,
    progress: Any = None,
    ownership: Ownership = Ownership(),
) -> dict[str, Any]:
    """Restore ``(volume, path)`` selections of an image/VM point into the folder ``target``
    (the safe writer: nothing outside ``target``), or into the remote folder ``target``
    (``sftp://``, ``smb://``; credentials as for a file backup's source); per-file problems
    listed, not raised.  ``ownership`` only into a local folder
    (:func:`~vmkeep.disks.restore_model.refuse_ownership`, before anything is read)."""
    from vmkeep.browse.point import PointImage
    from vmkeep.guestfiles.backup import remote_protocol

    remote = remote_protocol(target, "target") is not None
    refuse_ownership(ownership, target, local=not remote)
    with PointImage(repo, point) as img:
        if remote:
            from vmkeep.browse.remote import restore_image_paths_to_url

            options = source_options(target, None, what="target_options")
            return restore_image_paths_to_url(
                img, selections, target, options, overwrite=overwrite, progress=progress
            ).to_json()
        from vmkeep.browse.local import restore_image_paths

        summary: dict[str, Any] = restore_image_paths(
            img, selections, target.removeprefix("file://"), overwrite=overwrite,
            progress=progress, ownership=ownership,
        ).to_json()
    return summary


@step_def("dump-image-files", NO_RETRY)
def dump_image_files(
    repo: Repository,
    point: RestorePoint,
    selections: list[tuple[str, str]],
    progress: Any = None,
) -> dict[str, Any]:
    """``(volume, path)`` selections of an image/VM point onto standard output (``restore files
    … --to -``): one regular file as its bytes, else a tar archive
    (:func:`vmkeep.browse.local.dump_image_paths`).  Not retried: the stream has begun.  Runs in
    the process whose standard output it writes (the CLI refuses ``--prefect`` with ``-``)."""
    from vmkeep.browse.local import dump_image_paths
    from vmkeep.browse.point import PointImage
    from vmkeep.storage.stream_out import StreamWriter

    with PointImage(repo, point) as img:
        summary = dump_image_paths(img, selections, StreamWriter(), progress)
    return summary.to_json()
