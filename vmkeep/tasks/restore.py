"""The steps of the restores into vSphere: one step per guest upload, VM action or disk.

The work is done by :mod:`vmkeep.browse` (files into a guest), :mod:`vmkeep.vsphere.vmconfig`
(recreate a VM, upload a disk), :mod:`vmkeep.vsphere.nfc_import` and
:mod:`vmkeep.vsphere.disk_stream` (NFC import leases fed with streamOptimized VMDKs),
:mod:`vmkeep.vsphere.disk_attach` (``restore disk``) and :mod:`vmkeep.storage` (the
random-access :class:`~vmkeep.storage.reader.PointReader`).  Steps are plain functions declared
with ``step_def`` (a Prefect task each under ``PrefectRuntime``: never cached, results never
persisted).  Creating a VM (also by import) is not retried (it may have run: a retry would then
fail with ``VMExists``); https/direct uploads retry on transient errors, NFC uploads never (a
stream cannot resume; the job aborts the lease).  Local restores of files out of image points
are :func:`vmkeep.tasks.image.restore_image_files` (no pyVmomi on that path).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, cast

from vmkeep.browse.catalog import index_point_files
from vmkeep.browse.guest import GuestTarget, upload_tree
from vmkeep.disks.restore_model import EntrySource
from vmkeep.runtime.base import NO_RETRY, step_def
from vmkeep.storage import crash_points
from vmkeep.storage.disk_rollback import roll_back
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import cbt, disk_attach, hotadd, mounted_datastore, replace, vm_lookup, vmconfig
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.disk_stream import StreamStats, vmdk_stream
from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.inventory import VirtualDisk, describe_vm
from vmkeep.vsphere.nfc_import import ImportLease, import_vm
from vmkeep.vsphere.restore_marker import MARK_KEY, RestoreMark, clear_mark
from vmkeep.vsphere.waiter import wait_for_task

log = logging.getLogger(__name__)
UPLOAD_BUFFER = 4 << 20


@step_def("restore-files-to-guest")
def restore_to_guest(
    session: Session,
    vm_ref: Any,
    creds: Credentials,
    sources: list[tuple[str, EntrySource, list[str]]],
    target: GuestTarget,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Upload ``paths`` of each source (``(where, source, paths)``: ``where`` names a volume,
    ``p1:``, in reports) into the guest directory ``target`` (guest operations)."""
    summary = None
    for where, source, paths in sources:
        summary = upload_tree(
            session,
            vm_ref,
            creds,
            source,
            paths,
            target,
            overwrite=overwrite,
            progress=progress,
            summary=summary,
            where=where,
        )
    assert summary is not None
    return summary.to_json()


@step_def("set-aside-vm", NO_RETRY)
def set_aside_task(
    session: Session, name: str, run_id: str, folder: Any
) -> replace.SetAside | None:
    """Set the VM a restore of ``name`` into ``folder`` replaces aside (None if there is none;
    :func:`vmkeep.vsphere.vm_lookup.vm_to_replace`)."""
    vm = vm_lookup.vm_to_replace(session, name, folder)
    return None if vm is None else replace.set_aside(session, vm, name, run_id)


@step_def("put-back-vm", NO_RETRY)
def put_back_task(session: Session, aside: replace.SetAside) -> None:
    """Give a VM set aside its name and power state back (its replacement failed)."""
    replace.put_back(session, aside.vm, aside.name, aside.was_on)


@step_def("remove-replaced-vm", NO_RETRY)
def remove_replaced_task(session: Session, aside: replace.SetAside) -> None:
    """Destroy a VM set aside (its replacement is complete)."""
    replace.remove_replaced(session, aside)


@step_def("create-vm", NO_RETRY)
def create_vm_task(
    session: Session,
    config: Mapping[str, Any],
    name: str,
    where: vmconfig.Placement,
    datastore: str,
    options: vmconfig.NewVmOptions,
    mark: RestoreMark | None = None,
) -> vmconfig.CreatedVM:
    """Recreate the VM from its saved configuration at ``where`` (:func:`vmconfig.placement`;
    never over an existing VM)."""
    return vmconfig.create_vm(
        session, config, name, where, datastore, options=options,
        marker={MARK_KEY: mark.value()} if mark else None,
    )


@step_def("import-vm", NO_RETRY)
def import_vm_task(
    session: Session,
    config: Mapping[str, Any],
    name: str,
    where: vmconfig.Placement,
    datastore: str,
    options: vmconfig.NewVmOptions,
    mark: RestoreMark,
) -> tuple[vmconfig.CreatedVM, ImportLease]:
    """Create the VM through an NFC import lease (not retried; never over an existing VM); its
    disks are filled by :func:`nfc_upload_disk` while the lease is open."""
    new = vmconfig.plan_new_vm(session, config, name, where, datastore, options,
                               {MARK_KEY: mark.value()})
    lease = import_vm(session, new.where.pool, new.where.folder, new.where.host, new.spec)
    try:
        pairs = vmconfig.disk_pairs(session, lease.vm, config)
        warnings = new.warnings + vmconfig.created_warnings(session, lease.vm, config, options)
    except BaseException:
        lease.abort("vmkeep restore failed reading the new VM")
        raise
    return vmconfig.CreatedVM(lease.vm, name, pairs, warnings), lease


@step_def("nfc-upload-disk", NO_RETRY)
def nfc_upload_disk(
    lease: ImportLease,
    url: str,
    repo: Repository,
    point: RestorePoint,
    disk: int,
    file_name: str,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Stream disk ``disk`` of ``point`` as a streamOptimized VMDK into the lease's ``url``
    (not retried: an NFC upload cannot resume)."""
    reader = PointReader(repo, point, disk, readahead=0)
    stats = StreamStats()
    try:
        if lease.total <= 0:
            lease.total = reader.size

        def tick(n: int) -> None:
            lease.advance(n)
            if progress is not None:
                progress(n)

        lease.upload(url, vmdk_stream(reader, stats, progress=tick), what=f"NFC upload {file_name}")
    finally:
        reader.close()
    return {
        "disk": disk,
        "file_name": file_name,
        "bytes": reader.size,
        "bytes_sent": stats.bytes_sent,
        "data_bytes": stats.data_bytes,
        "transport": "nfc",
        "chunks_fetched": reader.cache.fetches,
    }


@step_def("finish-restored-vm", NO_RETRY)
def finish_vm_task(
    session: Session, vm_ref: Any, datacenter: str, config: Mapping[str, Any]
) -> dict[str, Any]:
    """Put the saved NVRAM beside the new VM's .vmx, then remove the half-restored mark."""
    out: dict[str, Any] = {"nvram": None}
    data = vmconfig.nvram_bytes(config)
    if data is not None:
        out["nvram"] = vmconfig.upload_nvram(session, vm_ref, datacenter, data)
    clear_mark(session, vm_ref)
    return out


@step_def("import-helper-vm", NO_RETRY)
def import_helper_task(
    session: Session, target_vm: Any, name: str, datastore: str, capacity: int,
    provisioning: vmconfig.Provisioning, mark: RestoreMark,
) -> ImportLease:
    """Create the helper VM of ``restore disk`` (one disk, allocated as ``provisioning`` says)
    through an NFC import lease, on the target VM's host, pool and folder."""
    host = session.get(target_vm, "runtime.host")
    pool = session.get(target_vm, "resourcePool") or session.get(
        session.get(host, "parent"), "resourcePool"
    )
    folder = session.get(target_vm, "parent")
    spec = disk_attach.helper_spec(
        name, datastore, capacity, provisioning, {MARK_KEY: mark.value()}
    )
    return import_vm(session, pool, folder, host, spec)


@step_def("attach-restored-disk", NO_RETRY)
def attach_restored_task(
    session: Session, helper: Any, target_vm: Any, dest: str, capacity: int,
    replace_key: int | None = None,
) -> dict[str, Any]:
    """Move the helper's disk beside the target VM, attach it there (in the place of its disk
    ``replace_key`` when given), destroy the helper."""
    disk_attach.move_disk_to(session, helper, dest)
    try:
        if replace_key is not None:
            attached = disk_attach.replace_disk(session, target_vm, replace_key, dest, capacity)
        else:
            attached = disk_attach.attach_disk(session, target_vm, dest, capacity)
    except BaseException:
        disk_attach.delete_disk(session, target_vm, dest)
        raise
    wait_for_task(session, session.call(helper.Destroy_Task), what="destroy helper VM")
    return attached


@step_def("upload-vm-disk")
def upload_vm_disk(
    session: Session,
    repo: Repository,
    point: RestorePoint,
    disk: int,
    file_name: str,
    datacenter: str,
    transport: str = "https",
    datastore_mounts: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write disk ``disk`` of ``point`` into the new VM's disk ``file_name`` (HTTP PUT, or
    ``direct`` into a mounted datastore)."""
    reader = PointReader(repo, point, disk, readahead=4)
    try:
        if transport == "direct":
            written = write_disk_direct(reader, file_name, datastore_mounts or {}, progress)
        else:
            stream = _Counting(io.BufferedReader(reader, UPLOAD_BUFFER), progress)
            written = vmconfig.upload_disk(
                session, file_name, cast(IO[bytes], stream), reader.size, datacenter=datacenter
            )
    finally:
        reader.close()
    return {
        "disk": disk,
        "file_name": written,
        "bytes": reader.size,
        "chunks_fetched": reader.cache.fetches,
    }


@step_def("index-point-files")
def index_point(repo: Repository, point_id: str) -> dict[str, Any]:
    """Build (or find) the file-name catalog of an image/VM point for ``vmkeep find``; backup
    flows may call it right after committing a point so that searches never wait for it."""
    table, built = index_point_files(repo, point_id)
    return {"point": point_id, "entries": table.num_rows, "built": built}


@step_def("attach-vm-tags")
def attach_vm_tags(session: Session, vm_ref: Any, tags: list[str]) -> tuple[list[str], list[str]]:
    """Attach the recorded vSphere tags (``CATEGORY:TAG``) that exist to the restored VM:
    (attached, missing).  Attaching a tag twice is harmless: retried as a whole."""
    from vmkeep.vsphere import tagging

    return tagging.attach_tags(session, vm_ref._moId, tags)


@step_def("power-on-vm", NO_RETRY)
def power_on(session: Session, vm_ref: Any) -> str:
    """Power the restored VM on; returns its power state."""
    wait_for_task(session, session.call(vm_ref.PowerOnVM_Task), what="power on")
    return str(session.get(vm_ref, "runtime.powerState"))


@step_def("power-off-vm", NO_RETRY)
def power_off(session: Session, vm_ref: Any) -> str:
    """Power a VM off, hard (as pulling the plug: what the guest had not written is lost);
    returns its power state."""
    wait_for_task(session, session.call(vm_ref.PowerOffVM_Task), what="power off")
    return str(session.get(vm_ref, "runtime.powerState"))


@step_def("describe-vm")
def describe_vm_task(session: Session, vm_ref: Any) -> Any:
    return describe_vm(session, vm_ref)


class _Counting(io.RawIOBase):
    """A read-through wrapper reporting bytes read to ``progress`` (seekable for retries)."""

    def __init__(self, inner: io.BufferedReader, progress: Callable[[int], None] | None) -> None:
        super().__init__()
        self.inner, self.progress = inner, progress

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self.inner.seek(pos, whence)

    def read(self, n: int | None = -1) -> bytes:
        crash_points.reached("restore-piece")
        data = self.inner.read(-1 if n is None else n)
        if self.progress is not None and data:
            self.progress(len(data))
        return data


def write_disk_direct(
    reader: PointReader,
    file_name: str,
    mounts: Mapping[str, str],
    progress: Callable[[int], None] | None = None,
) -> str:
    """Write ``reader`` into the flat extent of ``file_name`` on a locally mounted datastore;
    all-zero chunks stay holes.  Returns the datastore path written."""
    extent = mounted_datastore.flat_extent(file_name, mounts, reader.size)
    fd = os.open(extent.local, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        table = reader.table
        for i in range(len(table)):
            data = reader.chunk_data(i)
            if data is not None:
                os.pwrite(fd, data, table.offsets[i])
            if progress is not None:
                progress(table.lengths[i])
        os.ftruncate(fd, reader.size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return extent.datastore_path


@dataclass(frozen=True)
class RollbackTarget:
    """Where a quick rollback writes a VM's disks: ``direct`` into the flat files of NFS
    datastores mounted here (``mounts``), or ``hotadd`` through the disks hot-added to ``mover``
    (marked with ``run_id`` and the VM's ``vm_uuid``, as the backups' hot-adds are)."""

    transport: str  # "direct" | "hotadd"
    vm_name: str
    vm_uuid: str
    run_id: str
    mounts: Mapping[str, str] = field(default_factory=dict)
    mover: hotadd.Mover | None = None


@contextmanager
def _writable(session: Session, target: RollbackTarget, disk: VirtualDisk,
              size: int) -> Iterator[tuple[int, str]]:
    """``(write descriptor, what was written)`` of ``disk`` on ``target``; closed (and
    detached) when the block ends."""
    if target.transport == "hotadd":
        if target.mover is None:
            raise VSphereError("hotadd without a mover VM")
        with hotadd.writable_device(session, disk, target.mover, target.run_id, target.vm_uuid,
                                    source_vm=target.vm_name) as device:
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)  # /dev/disk/by-id names are links
            try:
                yield fd, disk.file_name
            finally:
                os.close(fd)
        return
    extent = mounted_datastore.flat_extent(disk.file_name, target.mounts, size)
    fd = mounted_datastore.open_for_writing(extent)
    try:
        yield fd, extent.datastore_path
    finally:
        os.close(fd)


@step_def("roll-back-vm-disk")
def roll_back_vm_disk(
    session: Session,
    repo: Repository,
    point: RestorePoint,
    index: int,
    disk: VirtualDisk,
    target: RollbackTarget,
    areas: list[tuple[int, int]] | None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Quick rollback of one disk: make ``areas`` (None: all) of the VM's ``disk`` equal disk
    ``index`` of ``point``, writing only what differs
    (:func:`vmkeep.storage.disk_rollback.roll_back`; idempotent, so retried like a read)."""
    reader = PointReader(repo, point, index, readahead=4)
    try:
        with _writable(session, target, disk, reader.size) as (fd, written_to):
            stats = roll_back(reader, fd, areas, progress)
    finally:
        reader.close()
    return {
        "file_name": written_to,
        "bytes_checked": stats.bytes_checked,
        "bytes_written": stats.bytes_written,
        "chunks_fetched": reader.cache.fetches,
    }


@step_def("reset-cbt")
def reset_change_tracking(session: Session, vm_ref: Any) -> None:
    """Make the VM's change tracking forget every change id handed out so far (off, stun, on,
    stun): writes that bypass the host are then never missed by an incremental."""
    cbt.reset_cbt(session, vm_ref)
