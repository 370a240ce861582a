"""Instant VM recovery: run a VM straight from a restore point, then move it to production storage.

:func:`start`: the point's disks are exported over NFS by nfs-ganesha on this data mover
(:mod:`vmkeep.browse.instant_export`: reads fetch repository chunks, writes go to local
copy-on-write overlays, never to the repository); the export is mounted on the ESX host as a NAS
datastore (``HostDatastoreSystem.CreateNasDatastore``, NFS 4.1, named ``vmkeep-<run>``); the VM
is created from the point's saved configuration (:func:`vmkeep.vsphere.vmconfig.build_spec`:
firmware, settings, NICs disconnected, new identity; the saved NVRAM is put beside the ``.vmx`` on
the export) with its disks pointing at the exported descriptors, and powered on.

:func:`finalize`: storage vMotion (``RelocateVM_Task`` to ``datastore``) copies the running VM's
files and disks off the export; then the NAS datastore is removed from the host
(``RemoveDatastore``) and the export stopped.  :func:`cancel`: power off, ``UnregisterVM``
(nothing of the export is kept), remove the datastore, stop the export.

Every step is recorded in the run record (:mod:`vmkeep.browse.instant_runs`) so that a later
command on the same data mover finds the run; a failed start undoes what it made.

Only the host's VMkernel addresses (or ``nfs_clients``) may mount the export.  The ESX host must
reach the mover's NFS server at ``nfs_host`` on port 2049 (ESXi's NFS client
knows no other port).  Another port (tests bind ephemeral ones) is sent as ``host:port`` in
``remoteHost``, which only the ESX lab understands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from vmkeep.browse import instant_export, instant_runs
from vmkeep.browse.instant_runs import RunState
from vmkeep.errors import InputError
from vmkeep.storage import crash_points
from vmkeep.storage.errors import WrongPointKind
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.repository import Repository
from vmkeep.storage.secret_options import refuse_url_password
from vmkeep.vsphere import datastore_lookup, vm_lookup, vmconfig
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import NotFound, VSphereError
from vmkeep.vsphere.waiter import wait_for_task

NFS_PORT = 2049
TASK_TIMEOUT = 3600.0


def datastore_name(run_id: str) -> str:
    return f"vmkeep-{run_id}"


def find_object(session: Session, kind: str, name: str) -> Any:
    """The inventory object of type ``kind`` (``VirtualMachine``, ``Datastore``,
    ``HostSystem``…) called ``name``, or None.  (This and the helpers below are shared with
    :mod:`vmkeep.browse.instant_disks`.)"""
    from pyVmomi import vim

    return vmconfig._find(session, getattr(vim, kind), name)


def export_disks(rp: Any, config: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Per saved VM disk (in configuration order): the point's disk index and its size, or None
    for a disk that was not backed up (it is created empty)."""
    by_key = {int(d.extra["key"]): d.index for d in rp.disks if "key" in d.extra}
    out: list[dict[str, Any] | None] = []
    for d in config.get("disks", []):
        index = by_key.get(int(d["key"]))
        out.append(None if index is None else {"index": index, "capacity": rp.chunks[index].size})
    return out


def datastore_folder(name: str) -> str:
    """The VM's folder (and file stem) on the export: ``name`` reduced to ``[A-Za-z0-9._-]``
    (a VM name may hold ``/``, ``..`` or spaces; the folder is also a local path here)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return safe[:80] or "vm"


def _instant_spec(config: dict[str, Any], name: str, folder: str, ds: str,
                  networks: dict[str, Any], disks: list[dict[str, Any] | None],
                  options: vmconfig.NewVmOptions) -> tuple[Any, list[str]]:
    """``build_spec`` with the home on the NAS datastore and the backed-up disks attached as the
    exported descriptors (no file operation)."""
    spec, skipped, warnings = vmconfig.build_spec(config, name, ds, networks, options=options)
    spec.files.vmPathName = f"[{ds}] {folder}/{folder}.vmx"
    n = 0
    disk_specs = [c for c in spec.deviceChange if type(c.device).__name__.endswith("VirtualDisk")]
    for change, disk in zip(disk_specs, disks, strict=True):
        if disk is None:
            continue
        change.fileOperation = None
        change.device.backing.fileName = f"[{ds}] {folder}/disk{n}.vmdk"
        n += 1
    return spec, skipped + warnings


def vm_config(rp: RestorePoint) -> dict[str, Any]:
    """The saved VM configuration of ``rp``; :class:`WrongPointKind` when it has none (an image
    or an old VM point): nothing to start a VM from."""
    config = rp.meta.get("vm_config")
    if rp.kind != "vm" or not isinstance(config, dict):
        raise WrongPointKind(rp.short_id, rp.kind, "not a VM backup with a saved configuration")
    return config


def start(
    session: Session,
    repo_url: str,
    point: str,
    *,
    vcenter: str,
    host: str,
    name: str | None = None,
    folder: str | None = None,
    options: vmconfig.NewVmOptions | None = None,
    nfs_host: str = "127.0.0.1",
    listen: str = "127.0.0.1",
    nfs_port: int = NFS_PORT,
    nfs_clients: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the VM of ``point`` from an NFS export of the repository (see the module docstring);
    returns the run record (state ``running``).  Of ``options`` the network mapping, ``connect``
    and the resource pool apply: the VM gets a new identity, its disks are the export's (thin)."""
    started = time.monotonic()
    refuse_url_password(repo_url, "repo")  # it is recorded in the run and nbdkit's argv
    repository = Repository.open(repo_url, storage_options)
    rp = repository.load_point(point)
    config, rdm_notes = vmconfig.rdms_for_restore(vm_config(rp))
    # a new identity, and the export's thin descriptors as disks, whatever ``options`` say
    options = dataclasses.replace(options or vmconfig.NewVmOptions(), keep_identity=False,
                                  disk_format="thin")
    vmconfig.check_config(config)
    name = name or str(config.get("name") or rp.name)
    where = vmconfig.placement(session, config, host, folder, options)
    named_elsewhere = vm_lookup.check_name_free(session, name, where.folder, replaceable=False)
    clients = nfs_clients or host_addresses(session, where.host)
    if not clients:
        raise InputError(f"instant-restore: host {host} reports no VMkernel address; give the "
                         "addresses it mounts NFS from (--nfs-client)")
    disks = export_disks(rp, config)
    folder_name = datastore_folder(name)
    run_id = instant_runs.new_id()
    ds = datastore_name(run_id)
    record = instant_runs.update({
        "id": run_id, "state": "starting", "point": rp.id, "repo": repo_url,
        "vcenter": vcenter, "vm": name, "vm_moref": None, "host": host, "datastore": ds,
        "datastore_moref": None, "nfs": None, "supervisor_pid": None, "created": time.time(),
        "powered_on_s": None, "finalized_to": None, "error": None,
    })
    run = instant_runs.run_path(run_id)
    try:
        ready = instant_export.start(run, {
            "repo": repo_url, "point": rp.id, "folder": folder_name,
            "disks": [d for d in disks if d is not None], "host": listen, "port": nfs_port,
            "pseudo": f"/vmkeep/{run_id}", "clients": clients,
        })
        phases = {"export_s": round(time.monotonic() - started, 3)}
        port = int(ready["port"])
        instant_runs.update(record, supervisor_pid=ready["pid"],
                            nfs={"host": nfs_host, "port": port, "pseudo": ready["pseudo"]})
        ds_ref = mount_export(session, where.host, nfs_host, port, ready["pseudo"], ds)
        phases["mount_s"] = round(time.monotonic() - started, 3)
        instant_runs.update(record, datastore_moref=ds_ref._moId)
        spec, warnings = _instant_spec(config, name, folder_name, ds, where.networks, disks,
                                       options)
        warnings = rdm_notes + where.notes + named_elsewhere + warnings
        task = vmconfig.start_create_vm(session, where, spec)
        with vm_lookup.taken_as_vm_exists(name, replaceable=False):
            vm = wait_for_task(session, task, timeout=TASK_TIMEOUT, what=f"CreateVM {name}")
        crash_points.reached("instant-created")  # tests: killed before the VM is recorded
        phases["registered_s"] = round(time.monotonic() - started, 3)
        instant_runs.update(record, vm_moref=vm._moId)
        nvram = vmconfig.nvram_bytes(config)
        if nvram:  # EFI boot entries: ESXi's default name beside the .vmx, replacing a new one
            (run / "view" / folder_name / f"{folder_name}.nvram").write_bytes(nvram)
        wait_for_task(session, session.call(vm.PowerOnVM_Task, what=f"power on {name}"),
                      timeout=TASK_TIMEOUT, what=f"power on {name}")
    except BaseException as exc:
        with contextlib.suppress(Exception):
            _teardown(session, record, run)
        instant_runs.update(record, state="failed", error=str(exc)[:500])
        raise
    return instant_runs.update(
        record, state="running", warnings=warnings, phases=phases,
        powered_on_s=round(time.monotonic() - started, 3),
    )


def host_addresses(session: Session, host_ref: Any) -> list[str]:
    """The IP addresses of the host's VMkernel NICs (where its NFS client connects from)."""
    out = []
    for vnic in session.get(host_ref, "config.network.vnic") or []:
        ip = getattr(getattr(vnic, "spec", None), "ip", None)
        if ip is not None and getattr(ip, "ipAddress", None):
            out.append(str(ip.ipAddress))
    return out


def mount_export(session: Session, host_ref: Any, nfs_host: str, port: int, pseudo: str,
                 ds: str) -> Any:
    """Mount the export's ``pseudo`` path on the host as NFS 4.1 datastore ``ds``; its ref."""
    from pyVmomi import vim

    remote = nfs_host if port == NFS_PORT else f"{nfs_host}:{port}"
    spec = vim.host.NasVolume.Specification(
        remoteHost=remote, remotePath=pseudo, localPath=ds, accessMode="readWrite", type="NFS41",
    )
    dss = session.get(host_ref, "configManager.datastoreSystem")
    return session.call(dss.CreateNasDatastore, spec, what=f"CreateNasDatastore {ds}")


def _vm(session: Session, record: dict[str, Any]) -> Any:
    """The run's VM: the recorded one, or (a start killed before it was recorded) the VM of that
    name whose ``.vmx`` is on the run's own datastore; never any other VM (another folder may
    hold a VM of the same name)."""
    if record.get("vm_moref"):
        return vm_lookup.vm_by_moref(session, record["vm_moref"], record["vm"])
    for vm, _ in vm_lookup.vms_called(session, record["vm"]):
        vmx = str(session.get(vm, "config.files.vmPathName") or "")
        if vmx.startswith(f"[{record['datastore']}] "):
            return vm
    return None


def remove_datastore(session: Session, record: dict[str, Any]) -> None:
    """Unmount the run's NAS datastore from its host (nothing if it is gone already)."""
    host_ref = find_object(session, "HostSystem", record["host"])
    if host_ref is None:
        if find_object(session, "Datastore", record["datastore"]) is None:
            return  # gone with its host
        raise NotFound(f"host {record['host']!r}")
    ds_ref = datastore_lookup.find_datastore(session, record["datastore"], host_ref)
    if ds_ref is None:
        return
    dss = session.get(host_ref, "configManager.datastoreSystem")
    session.call(dss.RemoveDatastore, ds_ref, what=f"RemoveDatastore {record['datastore']}")


def stop_export(record: dict[str, Any], run: Path) -> dict[str, Any]:
    """Stop the run's export processes; their statistics (``bytes_fetched``…)."""
    pid = record.get("supervisor_pid")
    if not pid:
        return {}
    return instant_export.stop(run, int(pid))


def _teardown(session: Session, record: dict[str, Any], run: Path) -> dict[str, Any]:
    """Power off and unregister the run's VM (if any), remove the datastore, stop the export."""
    vm = _vm(session, record)
    if vm is not None:
        if session.get(vm, "runtime.powerState") == "poweredOn":
            wait_for_task(session, session.call(vm.PowerOffVM_Task, what="power off"),
                          timeout=TASK_TIMEOUT, what="power off")
        session.call(vm.UnregisterVM, what=f"unregister {record['vm']}")
    remove_datastore(session, record)
    return stop_export(record, run)


def check_running(record: dict[str, Any], action: str) -> None:
    """:class:`RunState` unless the run still has something to ``action`` (cancel)."""
    if record["state"] not in ("running", "starting", "failed"):
        raise RunState(record["id"], record["state"], f"nothing to {action}")


def finalize(session: Session, record: dict[str, Any], datastore: str) -> dict[str, Any]:
    """Move the run's VM to ``datastore`` (storage vMotion), then remove the NAS datastore and
    stop the export; returns the updated record."""
    from pyVmomi import vim

    started = time.monotonic()
    vm, target = finalize_checks(session, record, datastore, _vm)
    task = session.call(vm.RelocateVM_Task, vim.vm.RelocateSpec(datastore=target),
                        what=f"storage vMotion of {record['vm']}")
    wait_for_task(session, task, timeout=TASK_TIMEOUT * 24, what="storage vMotion")
    left = _files_on(session, vm, record["datastore"])
    if left:
        raise VSphereError(f"after storage vMotion still on {record['datastore']}: "
                           + ", ".join(left))
    remove_datastore(session, record)
    stats = stop_export(record, instant_runs.run_path(record["id"]))
    return instant_runs.update(record, state="finalized", finalized_to=datastore,
                               finalize_s=round(time.monotonic() - started, 3),
                               bytes_fetched=stats.get("bytes_fetched"))


def finalize_checks(
    session: Session, record: dict[str, Any], datastore: str,
    find_vm: Any,
) -> tuple[Any, Any]:
    """``(the run's VM, the target datastore)`` for a finalize — or :class:`RunState` (not
    running, or the target is the run's own datastore) / :class:`NotFound` /
    :class:`~vmkeep.vsphere.errors.DatastoreNotMounted` (the VM's host does not mount it).
    ``find_vm``: ``(session, record) -> VM or None``."""
    if record["state"] != "running":
        raise RunState(record["id"], record["state"], "only a running instant restore finalizes")
    vm = find_vm(session, record)
    if vm is None:
        raise NotFound(f"VM {record['vm']!r} of run {record['id']}")
    target = datastore_lookup.resolve_datastore(session, datastore, vm)
    if datastore == record["datastore"]:
        raise RunState(record["id"], "running", "the target must be a production datastore")
    vmconfig.check_host_mounts(session, session.get(vm, "runtime.host"), datastore, record["vm"])
    return vm, target


def disks_on(session: Session, vm: Any, ds: str) -> list[Any]:
    """The VM's disk devices whose file is on datastore ``ds``."""
    from pyVmomi import vim

    prefix = f"[{ds}]"
    return [d for d in session.get(vm, "config.hardware.device") or []
            if isinstance(d, vim.vm.device.VirtualDisk)
            and str(getattr(d.backing, "fileName", "")).startswith(prefix)]


def _files_on(session: Session, vm: Any, ds: str) -> list[str]:
    """The VM's configuration file and disk files on datastore ``ds``."""
    files = [str(d.backing.fileName) for d in disks_on(session, vm, ds)]
    vmx = str(session.get(vm, "config.files.vmPathName") or "")
    return [vmx, *files] if vmx.startswith(f"[{ds}]") else files


def cancel(session: Session, record: dict[str, Any]) -> dict[str, Any]:
    """Power the run's VM off, unregister it, remove the NAS datastore, stop the export."""
    check_running(record, "cancel")
    stats = _teardown(session, record, instant_runs.run_path(record["id"]))
    return instant_runs.update(record, state="cancelled",
                               bytes_fetched=stats.get("bytes_fetched"))
