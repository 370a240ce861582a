"""Job: restore one disk of a VM or image restore point and attach it to an existing VM (e.g. to
copy files off it inside that VM).

Open the point → log in → find the target VM → the datastore is mounted on the target's host
(``DatastoreNotMounted`` before anything is created) → room on the datastore (the capacity of a
thick disk, the non-zero bytes of a thin one; else ``NotEnoughSpace`` before anything is
created) → ``helper VM <name>`` (an NFC import lease creating a one-disk helper VM marked
half-restored, on the target's host, pool and folder; datastore: ``datastore`` or the
target's; thin, thick or eagerly zeroed as backed up or as ``disk_format`` says) →
``disk <n> <file>`` (streamOptimized) → lease completed → ``attach to <vm>`` (detach from the
helper, move beside the target as ``<target>-vmkeep-<point>-<disk>[-<run>].vmdk``, attach on a
free SCSI unit — the target may be running — and destroy the helper).  Any failure aborts the
lease and destroys the helper (:class:`~vmkeep.jobs.restore_common.HalfRestored`); the target
VM is never changed except by the final attach.

With ``replace`` (Veeam's virtual disk restore to the original VM) the restored disk takes the
place of the target's disk at the backed-up disk's virtual device node (``scsi0:1``; recorded with
the point, or derived from its saved controllers for older points) in one reconfiguration. Checked
before anything is created: the target is a VM (not a template) with a disk at that node, without
snapshots (its disk would be a delta of a chain), powered off (a running guest would lose the disk
under its feet). The replaced disk is detached, never deleted: its file stays on the datastore and
the summary names it (``attached.replaced``) — delete it once the restore is verified.
"""

from __future__ import annotations

import time
from typing import Any

from vmkeep.errors import InputError
from vmkeep.jobs.restore_common import (
    HalfRestored,
    byte_progress,
    open_point,
    scan_before_restore,
    vcenter,
)
from vmkeep.jobs.restore_specs import RestoreDiskSpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.manifest import RestorePoint
from vmkeep.tasks.restore import attach_restored_task, import_helper_task, nfc_upload_disk
from vmkeep.vsphere import datastore_space, disk_attach, vm_lookup, vmconfig
from vmkeep.vsphere.datastore_paths import split_datastore_path
from vmkeep.vsphere.errors import NotFound
from vmkeep.vsphere.inventory import disks_from_devices


def restore_disk(spec: RestoreDiskSpec, rt: Runtime) -> dict[str, Any]:
    """Restore disk ``spec.disk`` of ``spec.point`` and attach it to VM ``spec.vm``."""
    started = time.monotonic()
    repository, point = open_point(spec, ("vm", "image"), "holds no disks")
    scanned = scan_before_restore(rt, repository, point, spec.yara_rules)
    disk = spec.disk
    if disk not in point.chunks:
        raise InputError(f"restore disk: point {point.short_id} has no disk {disk}")
    capacity = point.chunks[disk].size
    saved = next((d for d in point.disks if d.index == disk), None)
    as_saved = saved.extra if saved is not None else {"thin": True}
    provisioning = vmconfig.NewVmOptions(disk_format=spec.disk_format).provisioning(as_saved)
    with vcenter(spec.vcenter) as session, HalfRestored(rt, session) as made:
        target = vm_lookup.resolve_vm(session, spec.vm).ref
        datastore = spec.datastore
        if datastore is None:
            vmx = str(session.get(target, "config.files.vmPathName") or "")
            if not vmx:
                raise NotFound(f"datastore of VM {spec.vm!r}")
            datastore = split_datastore_path(vmx)[0]
        replace_key = _disk_to_replace(session, target, point, disk, spec.vm) \
            if spec.replace else None
        vmconfig.check_host_mounts(session, session.get(target, "runtime.host"), datastore, spec.vm)
        datastore_space.ensure_room(  # before anything is created
            session, datastore, target,
            point.chunks[disk].data_bytes() if provisioning.thin else capacity,
            f"restore of disk {disk} of {point.short_id}",
            "choose another with --datastore, or a thin disk with --disk-format thin",
        )
        run = made.mark.run_id[:6]
        name = f"{disk_attach.HELPER_PREFIX}{point.short_id}-{disk}-{run}"
        lease = rt.step(
            import_helper_task, session, target, name, datastore, capacity, provisioning, made.mark,
            step_name=f"helper VM {name}",
        )
        made.created(lease.vm, lease)
        file_name = disk_attach.first_disk_file(session, lease.vm)
        with byte_progress(rt, f"disk {disk} to {spec.vm}", capacity) as bar:
            sent = rt.step(
                nfc_upload_disk, lease, lease.disk_urls()[0], repository, point, disk,
                file_name, bar.advance, step_name=f"disk {disk} {file_name}",
            )
        made.uploaded()
        stem = f"{spec.vm}-vmkeep-{point.short_id}-{disk}-{run}"
        dest = disk_attach.target_path(session, target, datastore, stem)
        attached = rt.step(
            attach_restored_task, session, made.vm, target, dest, capacity, replace_key,
            step_name=f"{'replace a disk of' if spec.replace else 'attach to'} {spec.vm}",
        )
        made.keep()  # the attach destroyed the helper
    rt.log.info("restored disk %d of %s, attached to %s as %s", disk, point.short_id, spec.vm,
                attached.get("file_name"))
    if attached.get("replaced"):
        rt.log.warning("the replaced disk of %s is kept at %s: delete it once the restore is "
                       "verified", spec.vm, attached["replaced"])
    summary = {
        "point": point.id,
        "disk": disk,
        "vm": spec.vm,
        "datastore": datastore,
        "capacity": capacity,
        "provisioning": provisioning.label,
        "bytes_sent": sent["bytes_sent"],
        "data_bytes": sent["data_bytes"],
        "attached": attached,
        "scan": scanned,
        "duration_s": round(time.monotonic() - started, 3),
    }
    rt.publish_table(
        "restore-disk",
        [{k: v for k, v in summary.items() if k not in ("attached", "scan")}
         | {"file": attached.get("file_name")}],
        f"Disk {disk} of {point.short_id} attached to {spec.vm}",
    )
    return summary


#: controller types of a saved configuration (``meta.vm_config.controllers``) → node prefix
_BUSES = (("NVME", "nvme"), ("AHCI", "sata"), ("SATA", "sata"), ("IDE", "ide"), ("", "scsi"))


def saved_node(point: RestorePoint, index: int) -> str | None:
    """The virtual device node (``scsi0:1``) disk ``index`` of ``point`` had: as recorded, else
    from the saved configuration's controllers (points made before nodes were recorded)."""
    saved = next((d for d in point.disks if d.index == index), None)
    if saved is None:
        return None
    if saved.extra.get("node"):
        return str(saved.extra["node"])
    config = point.meta.get("vm_config") or {}
    controller = next((c for c in config.get("controllers") or []
                       if c.get("key") == saved.extra.get("controller_key")), None)
    unit = saved.extra.get("unit_number")
    if controller is None or unit is None:
        return None
    kind = next(p for marker, p in _BUSES if marker in str(controller.get("type", "")).upper())
    return f"{kind}{controller.get('bus', 0)}:{unit}"


def _disk_to_replace(session: Any, target: Any, point: RestorePoint, index: int, vm: str) -> int:
    """The device key of the target's disk that ``replace`` puts disk ``index`` in the place
    of, after the checks in the module docstring (:class:`InputError` when one fails)."""
    node = saved_node(point, index)
    if node is None:
        raise InputError(f"restore disk --replace: point {point.short_id} does not say where "
                         f"disk {index} was attached (an image point?)")
    props = session.props(target, ["runtime.powerState", "snapshot", "config.hardware.device",
                                   "config.template"])
    if props.get("config.template"):
        raise InputError(f"restore disk --replace: {vm} is a template; convert it to a VM first")
    disks = disks_from_devices(props.get("config.hardware.device") or [], {})
    found = next((d for d in disks if d.node == node), None)
    if found is None:
        raise InputError(f"restore disk --replace: VM {vm} has no disk at {node} to replace "
                         f"(disks: {', '.join(f'{d.label} at {d.node}' for d in disks) or 'none'})")
    if props.get("snapshot") is not None:
        raise InputError(f"restore disk --replace: VM {vm} has snapshots; delete them first")
    if props.get("runtime.powerState") != "poweredOff":
        raise InputError(f"restore disk --replace: power VM {vm} off first (it is "
                         f"{props.get('runtime.powerState')})")
    return found.key
