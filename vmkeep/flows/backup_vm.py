"""Flow: back up one VM — licence check → pre-freeze → snapshot → post-thaw → mount → chunk,
compress, dedupe, write (a task per disk) → commit the restore point → release the snapshot.

Release is guaranteed three ways: ``finally`` in this flow (success, failure, cancellation
inside Python), Prefect ``on_crashed``/``on_cancellation`` hooks (the run died outside Python's
control but Prefect noticed), and the snapshot sweep (``sweep_snapshots.py``) for what no
hook saw (kill -9): every snapshot is named ``vmkeep-<run id>`` with a marker, so the sweep
removes exactly vmkeep's leftovers.

The VM's chain is keyed by its instanceUuid (``meta.instance_uuid`` of the restore points), so
renames and vMotion keep it; the previous point of the chain feeds CBT (``cbt``), the xxh3 scan
(``scan``) or nothing (``full``), as recorded per disk with the reason.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmkeep.storage.disk_backup import DiskResult
from vmkeep.storage.repository import Repository
from vmkeep.tasks import limits
from vmkeep.tasks.catalog import catalog_items
from vmkeep.tasks.image import commit_restore_point
from vmkeep.tasks.license_check import check_run
from vmkeep.tasks.runtime import direct_mode, flow, publish_table, step
from vmkeep.tasks.staging import remove_staged, stage_disks
from vmkeep.tasks.vcenter import VCenter, open_session, resolve_credentials
from vmkeep.tasks.vm import (
    TakenSnapshot,
    back_up_vm_disk,
    capture_vm_config,
    find_vm_task,
    guest_script,
    mount_disks,
    release_snapshot,
    take_snapshot,
)
from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.inventory import VMInfo


def _run_id() -> str:
    if not direct_mode():
        from prefect.runtime import flow_run

        if flow_run.id:
            return str(flow_run.id)
    return uuid.uuid4().hex


def _release_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect hook for crashed/cancelled runs: remove *this run's* snapshot if it is still there.

    Only the snapshot whose marker names this flow run is touched — other runs' snapshots are
    theirs to release (or the sweep's, once their runs are over).
    """
    from vmkeep.vsphere.snapshots import find_vmkeep_snapshots, remove_snapshot

    params = dict(flow_run.parameters or {})
    run_id = str(flow_run.id)
    try:
        session = open_session(_target(params))
    except Exception:
        return
    try:
        for snap, marker in find_vmkeep_snapshots(session):
            if marker.run_id == run_id:
                remove_snapshot(session, snap.vm, snap.ref, snap.name)
    except Exception:
        pass
    finally:
        session.close()


def _target(params: dict[str, Any]) -> VCenter:
    return VCenter(
        url=params["vcenter"],
        user=params.get("user"),
        password_file=params.get("password_file"),
        password_block=params.get("password_block"),
        cafile=params.get("cafile"),
        thumbprint=params.get("thumbprint"),
        insecure=bool(params.get("insecure", False)),
    )


def previous_point_of(repository: Repository, instance_uuid: str) -> Any:
    """The newest restore point of the VM's chain (by instanceUuid), or None."""
    points = [
        p
        for p in repository.list_points()
        if p.kind == "vm" and p.meta.get("instance_uuid") == instance_uuid
    ]
    return repository.load_point(points[-1].id) if points else None


@dataclass
class _Run:
    """What one run has done so far (for the release and the summary)."""

    warnings: list[str]
    taken: TakenSnapshot | None = None
    released: bool = False
    results: list[DiskResult] = field(default_factory=list)


def _freeze_and_snapshot(
    run: _Run,
    session: Any,
    info: VMInfo,
    guest_creds: Any,
    pre_freeze: str | None,
    post_thaw: str | None,
    quiesce: bool,
    quiesce_policy: str,
) -> None:
    """pre-freeze → snapshot (quiesce policy) → post-thaw; script failures per policy."""
    if pre_freeze:
        try:
            step(guest_script, session, info, guest_creds, pre_freeze)
        except VSphereError as exc:
            if quiesce_policy != "crash-consistent":
                raise
            run.warnings.append(f"pre-freeze script failed: {exc.get_message()}")
            quiesce = False
    try:
        run.taken = step(take_snapshot, session, info, _run_id(), quiesce, quiesce_policy)
        run.warnings.extend(run.taken.warnings)
    finally:
        if post_thaw:
            try:
                step(guest_script, session, info, guest_creds, post_thaw)
            except VSphereError as exc:
                run.warnings.append(f"post-thaw script failed: {exc.get_message()}")


def _release(run: _Run, session: Any, info: VMInfo) -> None:
    """Remove the run's snapshot; on failure record it (the sweep removes it later)."""
    if run.taken is None or run.released:
        return
    try:
        run.released = step(release_snapshot, session, info, run.taken)
    except Exception as exc:
        run.warnings.append(f"snapshot {run.taken.handle.name} not released: {exc}")


def _point_meta(
    info: VMInfo, run: _Run, transport: str, remote_device: str | None, config: dict[str, Any]
) -> dict[str, Any]:
    return {
        "instance_uuid": info.instance_uuid,
        "vm_name": info.name,
        "host": info.host,
        "cluster": info.cluster,
        "datacenter": info.datacenter,
        "folder": info.folder,
        "guest_id": info.guest_id,
        "consistency": run.taken.consistency if run.taken else "template (not running)",
        "transport": transport,
        "remote_device": remote_device if transport == "direct" else None,
        "snapshot": run.taken.handle.name if run.taken else None,
        "warnings": run.warnings,
        "vm_config": config,
    }


@flow(
    name="backup-vm",
    persist_result=False,
    log_prints=False,
    on_crashed=[_release_hook],
    on_cancellation=[_release_hook],
)
def backup_vm(
    repo: str,
    vm: str,
    vcenter: str,
    user: str | None = None,
    password_file: str | None = None,
    password_block: str | None = None,
    cafile: str | None = None,
    thumbprint: str | None = None,
    insecure: bool = False,
    transport: str = "https",
    datastore_mounts: dict[str, str] | None = None,
    remote_device: str | None = None,
    quiesce: bool = True,
    quiesce_policy: str = "fail",
    pre_freeze: str | None = None,
    post_thaw: str | None = None,
    guest_user: str | None = None,
    guest_password_file: str | None = None,
    enable_cbt: bool = False,
    concurrency: dict[str, int] | None = None,
    stage_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Back up VM ``vm`` (name or instanceUuid) into ``repo``; returns the run summary.

    ``transport``: ``https`` (LAN, datastore HTTP) or ``direct`` (LAN-free: ``datastore_mounts``
    maps datastore names to local paths; ``remote_device`` names this data mover for the
    licence).  ``quiesce_policy``: ``fail`` or ``crash-consistent`` when quiescing (or a
    pre-freeze script) fails.  ``pre_freeze``/``post_thaw``: commands run in the guest.
    ``concurrency``: snapshot slots per ``host`` and ``datastore`` (see ``vmkeep/tasks/limits.py``).
    ``stage_dir``: staging-proxy mode — copy the snapshot's disks into this local folder, release
    the snapshot, then back up from the copies (see ``vmkeep/tasks/staging.py``).
    """
    started = time.monotonic()
    target = _target(locals())
    repository = Repository.open(repo)
    session = open_session(target)
    run = _Run(warnings=[])
    try:
        with repository.lock("shared") as repo_lock:
            info = step(find_vm_task, session, vm)
            check_run(  # before any change to the VM, snapshot, staging copy or disk read
                image_vms=[
                    {"host": info.host or "", "name": info.name, "uuid": info.instance_uuid}
                ],
                remote_device=remote_device if transport == "direct" else None,
                catalog=catalog_items(repository),
            )
            if enable_cbt:  # a refused run leaves the VM's configuration as it was
                info = step(find_vm_task, session, info.instance_uuid, True)
            previous = previous_point_of(repository, info.instance_uuid)
            guest_creds = None
            if pre_freeze or post_thaw:
                guest_creds = resolve_credentials(guest_user, guest_password_file, None, "GUEST")
            with limits.hold(info.host, [d.datastore for d in info.disks], concurrency):
                try:
                    if info.template:
                        run.warnings.append("template: backed up without a snapshot")
                    else:
                        _freeze_and_snapshot(
                            run,
                            session,
                            info,
                            guest_creds,
                            pre_freeze,
                            post_thaw,
                            quiesce,
                            quiesce_policy,
                        )
                    mounted, mount_warnings = step(
                        mount_disks, session, info, run.taken, previous, transport, datastore_mounts
                    )
                    run.warnings.extend(mount_warnings)
                    try:
                        if (
                            stage_dir and run.taken is not None
                        ):  # staging proxy: copy, release early
                            mounted = step(
                                stage_disks,
                                mounted,
                                stage_dir,
                                run.taken.handle.name,
                                repository.config.image_chunk_size,
                            )
                            _release(run, session, info)
                        for disk in mounted:
                            run.results.append(
                                step(back_up_vm_disk, repository, disk, previous, progress)
                            )
                    finally:
                        for disk in mounted:
                            disk.reader.close()
                        if stage_dir and run.taken is not None:
                            remove_staged(stage_dir, run.taken.handle.name)
                    config = step(capture_vm_config, session, info)
                    repo_lock.ensure()  # our shared lock still stands: prune saw this backup
                    point = step(
                        commit_restore_point,
                        repository,
                        info.name,
                        run.results,
                        kind="vm",
                        parent=previous.id if previous else None,
                        meta=_point_meta(info, run, transport, remote_device, config),
                    )
                finally:
                    _release(run, session, info)
    finally:
        session.close()
    duration = time.monotonic() - started
    disks = [
        {
            "key": r.info.extra.get("key"),
            "label": r.info.name,
            "mode": r.info.mode,
            "reason": r.info.reason,
            "bytes_read": r.stats.bytes_read,
            "bytes_new": r.stats.bytes_new,
            "bytes_stored": r.stats.bytes_stored,
            "size": r.info.size,
            "duration_s": round(r.stats.duration_s, 3),
        }
        for r in run.results
    ]
    summary = {
        "id": point.id,
        "short_id": point.short_id,
        "vm": info.name,
        "instance_uuid": info.instance_uuid,
        "consistency": run.taken.consistency if run.taken else None,
        "disks": disks,
        "snapshot_removed": run.released,
        "warnings": run.warnings,
        "duration_s": round(duration, 3),
    }
    publish_table(
        "backup-vm-" + info.name.lower().replace(" ", "-")[:40],
        [_report_row(summary)],
        f"Backup of {info.name}",
    )
    return summary


def _report_row(summary: dict[str, Any]) -> dict[str, Any]:
    read = sum(d["bytes_read"] for d in summary["disks"])
    new = sum(d["bytes_new"] for d in summary["disks"])
    stored = sum(d["bytes_stored"] for d in summary["disks"])
    size = sum(d["size"] for d in summary["disks"])
    secs = max(summary["duration_s"], 1e-6)
    return {
        "VM": summary["vm"],
        "disks": len(summary["disks"]),
        "mode": ", ".join(f"{d['mode']} ({d['reason']})" for d in summary["disks"]),
        "read MB": round(read / 1e6, 1),
        "new MB": round(new / 1e6, 1),
        "dedupe ratio": round(size / new, 1) if new else None,
        "compression ratio": round(new / stored, 2) if stored else None,
        "duration s": summary["duration_s"],
        "MB/s": round(read / 1e6 / secs, 1),
        "snapshot released": summary["snapshot_removed"],
        "warnings": "; ".join(summary["warnings"]),
    }
