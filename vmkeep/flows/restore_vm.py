"""Flow: recreate a whole VM from a VM restore point — configuration, disks, optionally power.

DAG: open repository → load the point (kind ``vm``) → log in → ``create-vm`` from the saved
configuration (``meta.vm_config``; never over an existing VM unless ``overwrite``) →
``upload-vm-disk`` per backed-up disk (datastore HTTP PUT over the LAN, or ``direct`` into a
datastore mounted on this data mover) → ``power-on-vm`` if asked.

Defaults: the original name, host and the first disk's datastore; the target datacenter's root VM
folder.  NICs are attached to same-named networks the host sees (else skipped and reported),
start disconnected and get new MACs, so a restored copy never clashes with a running original.
If anything fails after the VM was created, the half-restored VM is destroyed (it would look
complete but hold empty disks); a VM that existed before is never touched unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from vmkeep.browse.errors import WrongPointKind
from vmkeep.errors import InputError
from vmkeep.storage.repository import Repository
from vmkeep.tasks.restore import create_vm_task, describe_vm_task, power_on, upload_vm_disk
from vmkeep.tasks.runtime import flow, publish_table, step
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.tasks.vcenter import VCenter, open_session
from vmkeep.vsphere.waiter import wait_for_task


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
    transport: str = "https",
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
    by_key = {int(d.extra["key"]): d.index for d in rp.disks if "key" in d.extra}
    target = VCenter(vcenter, user, password_file, password_block, cafile, thumbprint, insecure)
    session = open_session(target)
    created = None
    disks: list[dict[str, Any]] = []
    warnings: list[str] = []
    state = "poweredOff"
    try:
        created = step(create_vm_task, session, config, name, host, datastore, folder, overwrite)
        warnings.extend(created.skipped_nics)
        datacenter = step(describe_vm_task, session, created.ref).datacenter or ""
        for pair in created.disks:
            index = by_key.get(int(pair["source_key"]))
            if index is None:
                warnings.append(f"disk {pair['source_key']} was not backed up: left empty")
                continue
            disks.append(
                step(
                    upload_vm_disk,
                    session,
                    repository,
                    rp,
                    index,
                    pair["file_name"],
                    datacenter,
                    transport,
                    datastore_mounts,
                    progress,
                )
            )
        if power_on_after:
            state = step(power_on, session, created.ref)
    except BaseException:
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
