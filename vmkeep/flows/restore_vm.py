"""Flow: recreate a whole VM from a VM restore point — configuration, disks, optionally power.

DAG: open repository → load the point (kind ``vm``) → log in → then, by ``transport``:

- ``nfc`` (default; any datastore type): ``import-vm`` (``ImportVApp`` from the saved
  configuration ``meta.vm_config``; never over an existing VM unless ``overwrite``) →
  ``nfc-upload-disk`` per backed-up disk (a streamOptimized VMDK generated on the fly: zero and
  never-written chunks are not sent, so thin disks stay thin) → lease completed;
- ``https`` (VMFS/NFS only): ``create-vm`` → ``upload-vm-disk`` per disk (HTTP PUT of every byte
  into the ``-flat.vmdk``: the disk ends up fully allocated);
- ``direct`` (NFS datastores mounted writable on this data mover): ``create-vm`` →
  ``upload-vm-disk`` writing the flat file with holes;

→ ``finish-restored-vm`` (NVRAM file, then the half-restored mark removed) → ``power-on-vm`` if
asked.  From creation until ``finish`` the VM carries vmkeep's half-restored mark
(:mod:`vmkeep.vsphere.restore_marker`) so that the sweep removes it after a kill -9.

Defaults: the original name, host and the first disk's datastore; the target datacenter's root VM
folder; a new identity (new BIOS/instance UUIDs and MACs; ``keep_identity`` keeps them, for a
disaster recovery where the original is gone).  NICs are attached to same-named networks the host
sees (else skipped and reported) and start disconnected.  If anything fails after the VM was
created, the lease is aborted and the half-restored VM destroyed; a VM that existed before is
never touched unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from vmkeep.browse.errors import WrongPointKind
from vmkeep.errors import InputError
from vmkeep.storage.repository import Repository
from vmkeep.tasks.restore import (
    create_vm_task,
    describe_vm_task,
    finish_vm_task,
    import_vm_task,
    nfc_upload_disk,
    power_on,
    upload_vm_disk,
)
from vmkeep.tasks.runtime import flow, publish_table, run_id, step
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.tasks.vcenter import VCenter, open_session
from vmkeep.vsphere import vmconfig
from vmkeep.vsphere.restore_marker import MarkKeeper, new_mark
from vmkeep.vsphere.waiter import wait_for_task

TRANSPORTS = ("nfc", "https", "direct")


@flow(name="restore-vm", persist_result=False, log_prints=False)
def restore_vm(
    repo: str,
    point: str,
    vcenter: str,
    user: str | None = None,
    password_file: str | None = None,
    password_block: str | None = None,
    cafile: str | None = None,
    thumbprint: str | None = None,
    insecure: bool = False,
    name: str | None = None,
    host: str | None = None,
    datastore: str | None = None,
    folder: str | None = None,
    power_on_after: bool = False,
    overwrite: bool = False,
    transport: str = "nfc",
    keep_identity: bool = False,
    datastore_mounts: dict[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Recreate the VM of ``point`` (see the module docstring); returns the run summary."""
    started = time.monotonic()
    refuse_secret_parameters(repo=repo, storage_options=storage_options)
    repository = Repository.open(repo, storage_options)
    rp = repository.load_point(point)
    config = rp.meta.get("vm_config")
    if rp.kind != "vm" or not isinstance(config, dict):
        raise WrongPointKind(rp.short_id, rp.kind, "not a VM backup with a saved configuration")
    name = name or str(config.get("name") or rp.name)
    host = host or rp.meta.get("host") or config.get("host")
    datastore = datastore or next(
        (d.extra["datastore"] for d in rp.disks if d.extra.get("datastore")), None
    )
    if not host or not datastore:
        raise InputError(
            "restore vm: the point names no host or datastore; give --host/--datastore"
        )
    if transport not in TRANSPORTS:
        raise InputError(f"restore vm: transport must be one of {', '.join(TRANSPORTS)}")
    by_key = {int(d.extra["key"]): d.index for d in rp.disks if "key" in d.extra}
    target = VCenter(vcenter, user, password_file, password_block, cafile, thumbprint, insecure)
    session = open_session(target)
    created = None
    lease = None
    keeper: MarkKeeper | None = None
    try:
        vmconfig.check_transport(session, transport, datastore, datastore_mounts)
    except BaseException:
        session.close()
        raise
    mark = new_mark(run_id())
    disks: list[dict[str, Any]] = []
    warnings: list[str] = []
    state = "poweredOff"
    extra: dict[str, Any] = {}
    try:
        if transport == "nfc":
            created, lease = step(
                import_vm_task, session, config, name, host, datastore, folder, overwrite,
                keep_identity, mark,
            )
            urls = lease.urls_for(created.disks)
            lease.total = sum(
                rp.chunks[by_key[int(p["source_key"])]].size
                for p in created.disks if int(p["source_key"]) in by_key
            )
        else:
            created = step(
                create_vm_task, session, config, name, host, datastore, folder, overwrite,
                keep_identity, mark,
            )
            urls = []
        warnings.extend(created.skipped_nics)
        keeper = MarkKeeper(session, created.ref, mark.run_id)
        datacenter = step(describe_vm_task, session, created.ref).datacenter or ""
        for i, pair in enumerate(created.disks):
            index = by_key.get(int(pair["source_key"]))
            if index is None:
                warnings.append(f"disk {pair['source_key']} was not backed up: left empty")
                continue
            if lease is not None:
                disks.append(step(
                    nfc_upload_disk, lease, urls[i], repository, rp, index, pair["file_name"],
                    progress,
                ))
            else:
                disks.append(step(
                    upload_vm_disk, session, repository, rp, index, pair["file_name"],
                    datacenter, transport, datastore_mounts, progress,
                ))
        if lease is not None:
            lease.complete()
            lease = None
        keeper.stop()
        extra = step(finish_vm_task, session, created.ref, datacenter, config)
        if power_on_after:
            state = step(power_on, session, created.ref)
    except BaseException as exc:
        if keeper is not None:
            keeper.stop()
        if lease is not None:
            lease.abort(f"vmkeep restore failed: {type(exc).__name__}")
        if created is not None:
            with contextlib.suppress(Exception):
                wait_for_task(session, session.call(created.ref.Destroy_Task), what="destroy")
        raise
    finally:
        session.close()
    summary = {
        "point": rp.id,
        "vm": name,
        "host": host,
        "datastore": datastore,
        "folder": folder,
        "disks": disks,
        "transport": transport,
        "keep_identity": keep_identity,
        "nvram": extra.get("nvram"),
        "power_state": state,
        "warnings": warnings,
        "duration_s": round(time.monotonic() - started, 3),
    }
    publish_table(
        "restore-vm-" + name.lower().replace(" ", "-")[:40],
        [
            {
                "VM": name,
                "host": host,
                "datastore": datastore,
                "disks": len(disks),
                "GB": round(sum(d["bytes"] for d in disks) / 1e9, 2),
                "power": state,
                "duration s": summary["duration_s"],
                "warnings": "; ".join(warnings),
            }
        ],
        f"Restore of {rp.short_id} as {name}",
    )
    return summary
