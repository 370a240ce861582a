"""Job: recreate a whole VM from a VM restore point — configuration, disks, optionally power.

Open the point (kind ``vm``, with its saved configuration) → log in → check the transport
against the datastore → check the datastore has room for the VM (thick disks at capacity, thin
ones at their non-zero bytes, the swap file when powered on: :func:`needed_bytes`; else
``NotEnoughSpace`` before anything is created) → then, by ``transport``:

- ``nfc`` (default; any datastore type): ``import VM <name>`` (``ImportVApp`` from the saved
  configuration ``meta.vm_config``; never over an existing VM unless ``overwrite``) →
  ``disk <n> <file>`` per backed-up disk (a streamOptimized VMDK generated on the fly: zero and
  never-written chunks are not sent, so thin disks stay thin) → lease completed;
- ``https`` (VMFS/NFS only): ``create VM <name>`` → ``disk <n> <file>`` per disk (HTTP PUT of
  every byte into the ``-flat.vmdk``: the disk ends up fully allocated);
- ``direct`` (NFS datastores mounted writable on this data mover): ``create VM <name>`` →
  ``disk <n> <file>`` writing the flat file with holes;

→ ``finish <name>`` (NVRAM file, then the half-restored mark removed) → ``tags of <name>`` (the
vSphere tags the VM carried at backup, ``meta.vm_tags``, those that exist here; by default only
under the original name, as Veeam restores tags only to the original location) → ``power on
<name>`` if asked. From creation until ``finish`` the VM carries vmkeep's half-restored mark
(:class:`~vmkeep.jobs.restore_common.HalfRestored`) so that the sweep removes it after a kill -9.

With ``overwrite``, a VM that already has the name — in the target folder, else the only VM of
that name (:func:`vmkeep.vsphere.vm_lookup.vm_to_replace`) — is first ``set aside <name>``
(marked, powered off, renamed: :class:`~vmkeep.jobs.restore_common.ReplacedVM`), and ``remove
replaced <name>`` destroys it only after ``finish``; if the restore fails it is put back as it
was.  Without it, a VM of the name in the target folder refuses the restore (vSphere keeps VM
names unique per folder); VMs of the name in other folders are a warning.

Defaults: the original name, host and the first disk's datastore; the VM's folder as saved, if
the target datacenter has it, else its root VM folder with a warning
(:func:`vmkeep.vsphere.vmconfig.saved_folder`); a new identity (new BIOS/instance UUIDs and
MACs; ``keep_identity`` keeps them, for a disaster recovery where the original is gone).  NICs
are attached to same-named networks the host sees (else skipped and reported) — or, with
``networks``, to the target network each source network is mapped to (a source the VM's NICs do
not use, or a target the host does not see, is refused before anything changes) — and start
disconnected unless ``connect_networks``.  Disks are thin or thick as backed up, or as
``disk_format`` says.  A disk the point holds no data for (excluded by the backup job —
``meta.excluded_disks`` — or independent) is created empty with a warning, or left out of the
new VM with ``drop_excluded_disks``; a physical-mode RDM (a LUN) is always left out, a
virtual-mode RDM becomes a VMDK of the LUN's contents, each with a warning
(:func:`vmkeep.vsphere.vmconfig.rdms_for_restore`).  If anything fails after the VM was created,
the lease is aborted and the half-restored VM destroyed; a VM that existed before is never
touched unless ``overwrite``, and never lost: it is destroyed only once its replacement is
complete.
"""

from __future__ import annotations

import time
from typing import Any

from vmkeep.errors import InputError
from vmkeep.jobs.quick_rollback import quick_rollback
from vmkeep.jobs.restore_common import (
    HalfRestored,
    ReplacedVM,
    byte_progress,
    open_point,
    scan_before_restore,
    vcenter,
)
from vmkeep.jobs.restore_specs import RestoreVmSpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.errors import WrongPointKind
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.repository import Repository
from vmkeep.tasks.restore import (
    attach_vm_tags,
    create_vm_task,
    describe_vm_task,
    finish_vm_task,
    import_vm_task,
    nfc_upload_disk,
    power_on,
    upload_vm_disk,
)
from vmkeep.vsphere import datastore_space, vm_lookup, vmconfig
from vmkeep.vsphere.errors import VSphereError

NOT_A_VM = "not a VM backup with a saved configuration"


def restore_vm(spec: RestoreVmSpec, rt: Runtime) -> dict[str, Any]:
    """Recreate the VM of ``spec.point`` (see the module docstring); returns the summary.
    With ``spec.quick_rollback``: :func:`vmkeep.jobs.quick_rollback.quick_rollback` instead."""
    if spec.quick_rollback:
        return quick_rollback(spec, rt)
    started = time.monotonic()
    repository, point = open_point(spec, ("vm",), NOT_A_VM)
    scanned = scan_before_restore(rt, repository, point, spec.yara_rules)
    config = point.meta.get("vm_config")
    if not isinstance(config, dict):
        raise WrongPointKind(point.short_id, point.kind, NOT_A_VM)
    config, dropped = vmconfig.rdms_for_restore(config)
    if spec.drop_excluded_disks:
        config, unsaved = without_unsaved_disks(point, config)
        dropped += unsaved
    name = spec.name or str(config.get("name") or point.name)
    host = spec.host or point.meta.get("host") or config.get("host")
    datastore = spec.datastore or next(
        (d.extra["datastore"] for d in point.disks if d.extra.get("datastore")), None
    )
    if not host or not datastore:
        raise InputError(
            "restore vm: the point names no host or datastore; give --host/--datastore"
        )
    with vcenter(spec.vcenter) as session:
        # refused before anything changes: a datastore, host or folder that does not exist
        options = vmconfig.NewVmOptions(spec.keep_identity, spec.networks, spec.connect_networks,
                                        spec.disk_format, spec.resource_pool)
        where = vmconfig.placement(session, config, host, spec.folder, options)
        vmconfig.check_transport(session, spec.transport, datastore, where.host,
                                 spec.datastore_mounts)
        vmconfig.check_host_mounts(session, where.host, datastore)
        datastore_space.ensure_room(
            session, datastore, where.host,
            needed_bytes(point, config, options, spec.power_on_after),
            f"restore of {point.short_id} as {name}",
            "choose another with --datastore, or thin disks with --disk-format thin",
        )
        dropped += where.notes
        folder = vm_lookup.folder_path(session, where.folder)
        with ReplacedVM(rt, session, name, spec.overwrite, where.folder) as replaced:
            with HalfRestored(rt, session) as made:
                disks, warnings, extra = _restore(
                    rt, spec, session, made, repository, point, config,
                    name, where, datastore, options,
                )
                new_vm = made.vm
                made.keep()
            warnings = dropped + warnings + replaced.remove()
        tags = _restore_tags(rt, spec, session, new_vm, point, warnings)
        state = "poweredOff"
        if spec.power_on_after:
            state = rt.step(power_on, session, new_vm, step_name=f"power on {name}")
    summary = {
        "point": point.id,
        "vm": name,
        "host": host,
        "datastore": datastore,
        "folder": folder,
        "resource_pool": spec.resource_pool,
        "disks": disks,
        "transport": spec.transport,
        "keep_identity": spec.keep_identity,
        "networks": spec.networks or {},
        "connect_networks": spec.connect_networks,
        "disk_format": spec.disk_format,
        "tags": tags,
        "nvram": extra.get("nvram"),
        "power_state": state,
        "scan": scanned,
        "warnings": warnings,
        "duration_s": round(time.monotonic() - started, 3),
    }
    for warning in warnings:
        rt.log.warning("restore vm %s: %s", name, warning)
    rt.log.info("restored VM %s from %s on %s / %s", name, point.short_id, host, datastore)
    rt.publish_table(
        "restore-vm-" + "".join(c if c.isalnum() else "-" for c in name.lower())[:40],
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
        f"Restore of {point.short_id} as {name}",
    )
    return summary


def needed_bytes(
    point: RestorePoint, config: dict[str, Any], options: vmconfig.NewVmOptions, power_on: bool
) -> int:
    """What the restored VM takes on its datastore: a thick disk its capacity, a thin one the
    bytes of its non-zero chunks (none for a disk the point does not hold: created empty), and
    the swap file (the VM's memory) when it is powered on."""
    by_key = point.disk_index_by_key()
    total = 0
    for disk in config.get("disks") or []:
        if options.provisioning(disk).thin:
            index = by_key.get(int(disk.get("key", -1)))
            if index is not None and index in point.chunks:
                total += point.chunks[index].data_bytes()
        else:
            total += int(disk.get("capacity") or 0)
    if power_on:
        total += int(config.get("memory_mb") or 0) << 20
    return total


def _restore_tags(
    rt: Runtime, spec: RestoreVmSpec, session: Any, vm: Any, point: RestorePoint,
    warnings: list[str],
) -> list[str]:
    """The point's vSphere tags attached to the restored VM (``restore_tags``; by default only
    when it is restored under its original name — a copy carrying, say, the backup policy tag
    would be picked up by the tag's jobs); tags that no longer exist, or a tagging service that
    refuses, are warnings — the VM stands."""
    wanted = [str(t) for t in point.meta.get("vm_tags") or []]
    original = str(point.meta.get("vm_name") or point.name)
    wanted_here = spec.restore_tags if spec.restore_tags is not None else (
        (spec.name or original) == original)  # a copy under another name: not tagged
    if not wanted_here or not wanted:
        return []
    try:
        attached, missing = rt.step(attach_vm_tags, session, vm, wanted,
                                    step_name=f"tags of {spec.name or point.name}")
    except VSphereError as exc:
        warnings.append(f"vSphere tags not attached ({', '.join(wanted)}): {exc.get_message()}")
        return []
    warnings.extend(f"vSphere tag {t} does not exist here: not attached" for t in missing)
    return list(attached)


def unsaved_disk(point: RestorePoint, key: int) -> str:
    """Why the point holds no data for the VM's disk ``key`` (for a warning)."""
    for entry in point.meta.get("excluded_disks") or []:
        if int(entry.get("key", -1)) == key:
            return (f"disk {key} ({entry.get('label')}) was excluded from the backup "
                    f"(rule {entry.get('rule')!r})")
    return f"disk {key} was not backed up (independent)"


def without_unsaved_disks(
    point: RestorePoint, config: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """``config`` without the disks the point holds no data for (``drop_excluded_disks``),
    and a note per disk left out."""
    saved = set(point.disk_index_by_key())
    disks = config.get("disks") or []
    kept = [d for d in disks if int(d.get("key", -1)) in saved]
    notes = [f"{unsaved_disk(point, int(d.get('key', -1)))}: left out of the new VM"
             for d in disks if d not in kept]
    return {**config, "disks": kept}, notes


def _restore(
    rt: Runtime,
    spec: RestoreVmSpec,
    session: Any,
    made: HalfRestored,
    repository: Repository,
    point: RestorePoint,
    config: dict[str, Any],
    name: str,
    where: vmconfig.Placement,
    datastore: str,
    options: vmconfig.NewVmOptions,
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Create the VM at ``where`` (checked by :func:`vmconfig.placement`), fill its disks,
    finish it: (disks, warnings, finish output)."""
    by_key = point.disk_index_by_key()
    new_vm = (session, config, name, where, datastore, options, made.mark)
    lease = None
    if spec.transport == "nfc":
        created, lease = rt.step(import_vm_task, *new_vm, step_name=f"import VM {name}")
        urls = lease.urls_for(created.disks)
        lease.total = sum(
            point.chunks[by_key[int(p["source_key"])]].size
            for p in created.disks
            if int(p["source_key"]) in by_key
        )
    else:
        created = rt.step(create_vm_task, *new_vm, step_name=f"create VM {name}")
        urls = []
    made.created(created.ref, lease)
    warnings = list(created.skipped_nics)
    datacenter = rt.step(describe_vm_task, session, created.ref).datacenter or ""
    total = sum(point.chunks[i].size for i in by_key.values() if i in point.chunks)
    disks: list[dict[str, Any]] = []
    with byte_progress(rt, f"disks of {name}", total) as bar:
        for i, pair in enumerate(created.disks):
            index = by_key.get(int(pair["source_key"]))
            if index is None:
                warnings.append(f"{unsaved_disk(point, int(pair['source_key']))}: created empty")
                continue
            step_name = f"disk {index} {pair['file_name']}"
            if lease is not None:
                disks.append(rt.step(
                    nfc_upload_disk, lease, urls[i], repository, point, index,
                    pair["file_name"], bar.advance, step_name=step_name,
                ))
            else:
                disks.append(rt.step(
                    upload_vm_disk, session, repository, point, index, pair["file_name"],
                    datacenter, spec.transport, spec.datastore_mounts, bar.advance,
                    step_name=step_name,
                ))
    made.uploaded()
    extra = rt.step(finish_vm_task, session, created.ref, datacenter, config,
                    step_name=f"finish {name}")
    return disks, warnings, extra
