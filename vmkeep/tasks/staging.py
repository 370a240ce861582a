"""Staging-proxy mode: copy a snapshot's disks to local disk, so the snapshot can go early.

The seed's "backup proxy" staged a VM's disks to the proxy's local disk and then sent them over
the LAN.  Here a data mover with ``stage_dir`` set does the same inside ``backup-vm``: after
``mount-disks``, :func:`stage_disks` copies what the backup will read of each snapshot disk —
the CBT areas of a ``cbt`` plan or the allocated areas of a ``full`` plan, both widened to whole
repository chunks as the backup reads them; the whole disk otherwise; never the chunks the plan
records as zeros unread (the guest's swap) — through the transport
reader (under ``VMKEEP_LIMIT_READ``: :func:`~vmkeep.storage.rate_limit.source_reads`) into
``<stage_dir>/<snapshot name>/<index>.raw``, sparse (all-zero blocks are not
written), and returns the same disks with readers over the staged files.  The flow then
releases the snapshot, chunks and writes from the staged copies, and :func:`remove_staged`
deletes them at the end (success or failure).

Contract: the staged reader returns exactly the bytes the snapshot reader returned for every
chunk the plan reads (outside those: zeros, never read by the backup); the originals are closed
only when every disk was staged (on failure the caller still owns and closes them); a partial
staging folder is removed on failure.  Space needed: the bytes the plan reads.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from vmkeep.runtime.base import NO_RETRY, step_def
from vmkeep.storage.disk_backup import chunk_reads
from vmkeep.storage.rate_limit import source_reads
from vmkeep.tasks.vm import MountedDisk
from vmkeep.vsphere import transports

BLOCK = 4 << 20
STAGE_DATASTORE = "vmkeep-stage"


def staging_folder(stage_dir: str, run_key: str) -> Path:
    """Where one run's staged disks live (``run_key``: the snapshot's name)."""
    return Path(stage_dir) / run_key


def _areas(mounted: MountedDisk, align: int) -> list[tuple[int, int]]:
    """The planned areas widened to whole ``align``-sized chunks (the backup reads whole
    chunks touching a changed area), merged, clipped to the disk, without the chunks the plan
    records as zeros unread (``--exclude-swap``)."""
    size = mounted.disk.capacity
    reads = chunk_reads(mounted.plan, size, align).reads
    return [(r.start * align, min(size, r.stop * align) - r.start * align) for r in reads]


def stage_one(mounted: MountedDisk, folder: Path, align: int) -> tuple[MountedDisk, int]:
    """Copy one disk's planned areas into ``folder``; returns the re-opened disk and bytes."""
    name = f"{mounted.index}.raw"
    path = folder / name
    copied = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, mounted.disk.capacity)
        areas = _areas(mounted, align)
        plan_reads = getattr(mounted.reader, "plan_reads", None)  # an nfc stream: say what
        if plan_reads is not None:  # is read, so that nothing else is kept in memory
            plan_reads(areas, align)
        limit = source_reads()
        for offset, data in mounted.reader.read_extents(areas, block=BLOCK):
            if limit is not None:  # booked as each block arrives: the limit holds per block
                limit.take(len(data))
            copied += len(data)
            if data.count(0) == len(data):  # leave a hole
                continue
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        finish = getattr(mounted.reader, "finish", None)
        if finish is not None:  # an nfc stream is good only when read to its end marker
            finish()
        os.fsync(fd)
    finally:
        os.close(fd)
    reader = transports.open_datastore_file(
        None, f"[{STAGE_DATASTORE}] {name}", "direct",
        datastore_mounts={STAGE_DATASTORE: str(folder)},
    )
    return replace(mounted, reader=reader), copied


@step_def("stage-disks", NO_RETRY)
def stage_disks(
    mounted: list[MountedDisk], stage_dir: str, run_key: str, chunk_size: int = BLOCK
) -> list[MountedDisk]:
    """Stage every disk (see the module docstring); returns readers over the staged copies.

    ``chunk_size``: the repository's image chunk size (areas are widened to whole chunks)."""
    folder = staging_folder(stage_dir, run_key)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    staged: list[MountedDisk] = []
    try:
        for disk in mounted:
            staged.append(stage_one(disk, folder, max(1, chunk_size))[0])
    except BaseException:
        for disk in staged:
            disk.reader.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    for disk in mounted:
        disk.reader.close()
    return staged


def remove_staged(stage_dir: str, run_key: str) -> None:
    """Delete one run's staged copies (no error when already gone)."""
    shutil.rmtree(staging_folder(stage_dir, run_key), ignore_errors=True)
