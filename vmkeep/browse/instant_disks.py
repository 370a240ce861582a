"""Instant disk recovery: disks of a restore point attached to an existing VM straight from the
repository, then moved to production storage (Veeam's "Instant Disk Recovery").

:func:`attach`: the chosen disks of a VM or image point are exported over NFS exactly as for
instant VM recovery (:mod:`vmkeep.browse.instant_export`: reads fetch repository chunks, writes
land in local copy-on-write overlays, never in the repository), the export is mounted on the
target VM's host as a NAS datastore (``vmkeep-<run>``), and each disk is added to the target VM
— running or not — on a free unit of its first SCSI controller
(:func:`vmkeep.vsphere.disk_attach.attach_disk`: ``ReconfigVM`` add, no file operation).  The
guest sees new disks at once; nothing of the VM is changed but the added devices.

:func:`finalize`: storage vMotion of those disks alone (``RelocateVM_Task`` with one
``DiskLocator`` per disk) to a production datastore — the guest keeps running and keeps its
writes — then the NAS datastore is removed and the export stopped.  :func:`cancel`: the disks
are detached (``ReconfigVM`` remove, no file operation: the guest's writes to them are dropped
with the overlays), the datastore removed, the export stopped; the VM itself stays.

The run record (:mod:`vmkeep.browse.instant_runs`, ``kind`` ``disks``) names the target VM by
name and managed object id, and each disk by the point's disk index, the device key it got, and
the file it points at; finalize and cancel act only on devices whose file is still on the run's
datastore.  A failed attach undoes what it made (disks detached first: vSphere refuses to remove
a datastore a VM's disk is on).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from vmkeep.browse import instant, instant_export, instant_runs
from vmkeep.errors import InputError
from vmkeep.storage.errors import WrongPointKind
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.repository import Repository
from vmkeep.storage.secret_options import refuse_url_password
from vmkeep.vsphere import disk_attach, vm_lookup
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.waiter import wait_for_task

KIND = "disks"


def choose_disks(rp: Any, wanted: list[str]) -> list[int]:
    """The point's disk indexes ``wanted`` names — an index, a virtual device node
    (``scsi0:1``) or a label (``Hard disk 2``) each — or all its disks; :class:`InputError`
    naming the point's disks for one it does not have."""
    saved = {d.index: d for d in rp.disks}
    indexes = sorted(rp.chunks)
    if not wanted:
        return indexes
    out: list[int] = []
    for w in wanted:
        found = [i for i in indexes
                 if w == str(i) or (i in saved and w in (saved[i].extra.get("node"),
                                                         saved[i].extra.get("label"),
                                                         getattr(saved[i], "name", None)))]
        if not found:
            names = ", ".join(
                f"{i}" + (f" ({saved[i].extra.get('node') or getattr(saved[i], 'name', '')})"
                          if i in saved else "") for i in indexes)
            raise InputError(f"instant-restore disk: point {rp.short_id} has no disk {w!r} "
                             f"(its disks: {names or 'none'})")
        if found[0] not in out:
            out.append(found[0])
    return out


def require_disks(rp: RestorePoint) -> None:
    """:class:`WrongPointKind` unless ``rp`` holds disks to attach."""
    if rp.kind not in ("vm", "image") or not rp.chunks:
        raise WrongPointKind(rp.short_id, rp.kind, "holds no disks")


def attach(
    session: Session,
    repo_url: str,
    point: str,
    *,
    vcenter: str,
    vm: str,
    disks: list[str] | None = None,
    nfs_host: str = "127.0.0.1",
    listen: str = "127.0.0.1",
    nfs_port: int = instant.NFS_PORT,
    nfs_clients: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attach disks ``disks`` (all when empty; see :func:`choose_disks`) of ``point`` to the
    existing VM ``vm`` from an NFS export of the repository; returns the run record (state
    ``running``)."""
    started = time.monotonic()
    refuse_url_password(repo_url, "repo")  # it is recorded in the run and nbdkit's argv
    repository = Repository.open(repo_url, storage_options)
    rp = repository.load_point(point)
    require_disks(rp)
    chosen = choose_disks(rp, disks or [])
    target = vm_lookup.resolve_vm(session, vm).ref  # NotFound, AmbiguousVM
    if session.get(target, "config.template"):
        raise InputError(f"instant-restore disk: {vm} is a template")
    host_ref = session.get(target, "runtime.host")
    host = str(session.get(host_ref, "name"))
    clients = nfs_clients or instant.host_addresses(session, host_ref)
    if not clients:
        raise InputError(f"instant-restore disk: host {host} reports no VMkernel address; give "
                         "the addresses it mounts NFS from (--nfs-client)")
    folder = f"{instant.datastore_folder(vm)}-disks"
    run_id = instant_runs.new_id()
    ds = instant.datastore_name(run_id)
    record = instant_runs.update({
        "id": run_id, "kind": KIND, "state": "starting", "point": rp.id, "repo": repo_url,
        "vcenter": vcenter, "vm": vm, "vm_moref": target._moId, "host": host, "datastore": ds,
        "datastore_moref": None, "nfs": None, "supervisor_pid": None, "created": time.time(),
        "disks": [], "finalized_to": None, "error": None,
    })
    run = instant_runs.run_path(run_id)
    try:
        ready = instant_export.start(run, {
            "repo": repo_url, "point": rp.id, "folder": folder,
            "disks": [{"index": i, "capacity": rp.chunks[i].size} for i in chosen],
            "host": listen, "port": nfs_port, "pseudo": f"/vmkeep/{run_id}", "clients": clients,
        })
        port = int(ready["port"])
        instant_runs.update(record, supervisor_pid=ready["pid"],
                            nfs={"host": nfs_host, "port": port, "pseudo": ready["pseudo"]})
        ds_ref = instant.mount_export(session, host_ref, nfs_host, port, ready["pseudo"], ds)
        instant_runs.update(record, datastore_moref=ds_ref._moId)
        attached: list[dict[str, Any]] = []
        for n, index in enumerate(chosen):
            path = f"[{ds}] {folder}/disk{n}.vmdk"
            got = disk_attach.attach_disk(session, target, path, rp.chunks[index].size)
            attached.append({"index": index, **got,
                             "node": _node(session, target, got["controller_key"],
                                           got["unit_number"])})
            instant_runs.update(record, disks=attached)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            _teardown(session, record)
        instant_runs.update(record, state="failed", error=str(exc)[:500])
        raise
    return instant_runs.update(record, state="running",
                               attached_s=round(time.monotonic() - started, 3))


def _node(session: Session, vm: Any, controller_key: int, unit: int) -> str:
    """The virtual device node (``scsi0:1``) of unit ``unit`` on the controller
    ``controller_key``, as the vSphere Client shows it."""
    ctl = next((d for d in session.get(vm, "config.hardware.device") or []
                if getattr(d, "key", None) == controller_key), None)
    bus = getattr(ctl, "busNumber", None)
    return f"scsi{bus}:{unit}" if bus is not None else f"{controller_key}:{unit}"


def _target(session: Session, record: dict[str, Any]) -> Any:
    """The run's VM: the one recorded (same name and managed object id), or None."""
    return vm_lookup.vm_by_moref(session, record["vm_moref"], record["vm"])


def _on_export(session: Session, vm: Any, record: dict[str, Any]) -> list[Any]:
    """The VM's disk devices whose file is on the run's datastore."""
    return instant.disks_on(session, vm, record["datastore"])


def _teardown(session: Session, record: dict[str, Any]) -> dict[str, Any]:
    """Detach the run's disks still on the export, remove the datastore, stop the export."""
    vm = _target(session, record)
    if vm is not None:
        devices = _on_export(session, vm, record)
        if devices:
            disk_attach.detach_disks(session, vm, devices)
    instant.remove_datastore(session, record)
    return instant.stop_export(record, instant_runs.run_path(record["id"]))


def finalize(session: Session, record: dict[str, Any], datastore: str) -> dict[str, Any]:
    """Move the run's disks to ``datastore`` (storage vMotion of those disks alone), then remove
    the NAS datastore and stop the export; returns the updated record."""
    from pyVmomi import vim

    started = time.monotonic()
    vm, target = instant.finalize_checks(session, record, datastore, _target)
    devices = _on_export(session, vm, record)
    if devices:
        spec = vim.vm.RelocateSpec(disk=[
            vim.vm.RelocateSpec.DiskLocator(diskId=d.key, datastore=target) for d in devices])
        task = session.call(vm.RelocateVM_Task, spec,
                            what=f"storage vMotion of {len(devices)} disk(s) of {record['vm']}")
        wait_for_task(session, task, timeout=instant.TASK_TIMEOUT * 24, what="storage vMotion")
    left = _on_export(session, vm, record)
    if left:
        raise VSphereError(f"after storage vMotion still on {record['datastore']}: "
                           + ", ".join(str(d.backing.fileName) for d in left))
    moved = {d.key: d for d in session.get(vm, "config.hardware.device") or []
             if getattr(d, "key", None) in {x["key"] for x in record["disks"]}}
    disks = [{**x, "file_name": str(moved[x["key"]].backing.fileName)} if x["key"] in moved
             else x for x in record["disks"]]
    instant.remove_datastore(session, record)
    stats = instant.stop_export(record, instant_runs.run_path(record["id"]))
    return instant_runs.update(record, state="finalized", finalized_to=datastore, disks=disks,
                               finalize_s=round(time.monotonic() - started, 3),
                               bytes_fetched=stats.get("bytes_fetched"))


def cancel(session: Session, record: dict[str, Any]) -> dict[str, Any]:
    """Detach the run's disks (their writes are dropped), remove the NAS datastore, stop the
    export; the VM stays."""
    instant.check_running(record, "cancel")
    stats = _teardown(session, record)
    return instant_runs.update(record, state="cancelled",
                               bytes_fetched=stats.get("bytes_fetched"))
