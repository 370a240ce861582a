"""Flow: restore one disk of a VM restore point and attach it to an existing VM (e.g. to copy
files off it inside that VM).

DAG: open repository → load the point → log in → find the target VM → ``import-helper-vm`` (an
NFC import lease creating a one-disk helper VM marked half-restored, on the target's host, pool
and folder; datastore: ``datastore`` or the target's) → ``nfc-upload-disk`` (streamOptimized, thin
kept) → lease completed → ``attach-restored-disk`` (detach from the helper, move beside the
target as ``<target>-vmkeep-<point>-<disk>[-<run>].vmdk``, attach on a free SCSI unit — the
target may be running — and destroy the helper).  Any failure aborts the lease and destroys the
helper; the target VM is never changed except by the final attach.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from vmkeep.browse.errors import WrongPointKind
from vmkeep.errors import InputError
from vmkeep.storage.repository import Repository
from vmkeep.tasks.restore import attach_restored_task, import_helper_task, nfc_upload_disk
from vmkeep.tasks.runtime import flow, run_id, step
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.tasks.vcenter import VCenter, open_session
from vmkeep.vsphere import disk_attach, vmconfig
from vmkeep.vsphere.datastore_paths import split_datastore_path
from vmkeep.vsphere.errors import NotFound
from vmkeep.vsphere.restore_marker import MarkKeeper, new_mark
from vmkeep.vsphere.waiter import wait_for_task


@flow(name="restore-disk", persist_result=False, log_prints=False)
def restore_disk(
    repo: str,
    point: str,
    disk: int,
    vcenter: str,
    vm: str,
    user: str | None = None,
    password_file: str | None = None,
    password_block: str | None = None,
    cafile: str | None = None,
    thumbprint: str | None = None,
    insecure: bool = False,
    datastore: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Restore disk ``disk`` of ``point`` and attach it to VM ``vm`` (module docstring)."""
    started = time.monotonic()
    refuse_secret_parameters(repo=repo, storage_options=storage_options)
    repository = Repository.open(repo, storage_options)
    rp = repository.load_point(point)
    if rp.kind not in ("vm", "image"):
        raise WrongPointKind(rp.short_id, rp.kind, "holds no disks")
    if disk not in rp.chunks:
        raise InputError(f"restore disk: point {rp.short_id} has no disk {disk}")
    capacity = rp.chunks[disk].size
    saved = next((d for d in rp.disks if d.index == disk), None)
    thin = bool(saved.extra.get("thin", True)) if saved is not None else True
    session = open_session(
        VCenter(vcenter, user, password_file, password_block, cafile, thumbprint, insecure)
    )
    lease = None
    helper = None
    keeper: MarkKeeper | None = None
    mark = new_mark(run_id())
    try:
        target = vmconfig.find_vm(session, vm)
        if datastore is None:
            vmx = str(session.get(target, "config.files.vmPathName") or "")
            if not vmx:
                raise NotFound(f"datastore of VM {vm!r}")
            datastore = split_datastore_path(vmx)[0]
        name = f"{disk_attach.HELPER_PREFIX}{rp.short_id}-{disk}-{mark.run_id[:6]}"
        lease = step(import_helper_task, session, target, name, datastore, capacity, thin, mark)
        helper = lease.vm
        keeper = MarkKeeper(session, helper, mark.run_id)
        file_name = disk_attach.first_disk_file(session, helper)
        sent = step(nfc_upload_disk, lease, lease.disk_urls()[0], repository, rp, disk,
                    file_name, progress)
        lease.complete()
        lease = None
        keeper.stop()
        stem = f"{vm}-vmkeep-{rp.short_id}-{disk}-{mark.run_id[:6]}"
        dest = disk_attach.target_path(session, target, datastore, stem)
        attached = step(attach_restored_task, session, helper, target, dest, capacity)
        helper = None
    except BaseException as exc:
        if keeper is not None:
            keeper.stop()
        if lease is not None:
            lease.abort(f"vmkeep restore failed: {type(exc).__name__}")
        if helper is not None:
            with contextlib.suppress(Exception):
                wait_for_task(session, session.call(helper.Destroy_Task), what="destroy helper")
        raise
    finally:
        session.close()
    return {
        "point": rp.id,
        "disk": disk,
        "vm": vm,
        "datastore": datastore,
        "capacity": capacity,
        "bytes_sent": sent["bytes_sent"],
        "data_bytes": sent["data_bytes"],
        "attached": attached,
        "duration_s": round(time.monotonic() - started, 3),
    }
