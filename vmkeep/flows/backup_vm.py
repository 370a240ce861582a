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

CBT is on by default (``enable_cbt``; see ``vmkeep/vsphere/cbt.py`` for VMware's rules) and every
CBT incremental is audited first (``vmkeep/storage/cbt_audit.py``).  On an audit mismatch the run
releases its snapshot, resets CBT on the VM (off, stun, on, stun), takes a new snapshot and reads
every disk whole (the epoch changed): the committed point is correct, its disks carry
``cbt_suspect`` and the new epoch's change ids, so the next run is ``cbt`` again.
"""

from __future__ import annotations

import contextlib
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmkeep.storage.cbt_audit import AuditPolicy, AuditResult, disk_record, run_summary
from vmkeep.storage.disk_backup import DiskResult
from vmkeep.storage.repository import Repository
from vmkeep.tasks import limits
from vmkeep.tasks.catalog import catalog_items
from vmkeep.tasks.image import commit_restore_point
from vmkeep.tasks.license_check import check_run
from vmkeep.tasks.runtime import direct_mode, flow, publish_markdown, publish_table, step
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.tasks.staging import remove_staged, stage_disks
from vmkeep.tasks.vcenter import VCenter, open_session, resolve_credentials
from vmkeep.tasks.vm import (
    MountedDisk,
    TakenSnapshot,
    audit_vm_disk,
    back_up_vm_disk,
    capture_vm_config,
    find_vm_task,
    guest_script,
    mount_disks,
    prepare_cbt,
    release_snapshot,
    reset_cbt_task,
    take_snapshot,
)
from vmkeep.vsphere import consistency
from vmkeep.vsphere.cbt import CbtStatus, DiskPlan, Mode
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
    pre_freeze_ok: bool = False
    suspects: dict[int, AuditResult] = field(default_factory=dict)  # disk key -> mismatch
    consistency: tuple[str, str] = ("crash", "")
    audit_summary: dict[str, Any] = field(default_factory=dict)
    audits: dict[int, AuditResult] = field(default_factory=dict)
    cbt_reset: bool = False


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
            run.pre_freeze_ok = True
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


def _consistency(run: _Run, session: Any, info: VMInfo) -> tuple[str, str]:
    """The restore point's consistency label from what happened (see vsphere/consistency.py)."""
    if run.taken is None:
        return "crash", "template (not running)"
    quiesced = run.taken.consistency != "crash"
    facts = None
    if quiesced:
        with contextlib.suppress(VSphereError):
            facts = consistency.guest_facts(session, info.ref)
    return consistency.label(quiesced, facts, run.pre_freeze_ok)


def _audit_disks(
    run: _Run, repository: Repository, mounted: list[MountedDisk], previous: Any,
    policy: AuditPolicy | None,
) -> None:
    """Audit every CBT-read disk; mismatches go to ``run.suspects`` (first attempt only)."""
    run.audits = {}
    for disk in mounted:
        seed = zlib.crc32(f"{run.taken.handle.name if run.taken else ''}:{disk.disk.key}".encode())
        result = step(audit_vm_disk, repository, disk, previous, policy, seed)
        if result is None:
            continue
        run.audits[disk.disk.key] = result
        if result.suspect and disk.disk.key not in run.suspects:
            run.suspects[disk.disk.key] = result
            run.warnings.append(
                f"CBT audit: disk {disk.disk.key} ({disk.disk.label}) is cbt-suspect: "
                f"{result.mismatches} of {result.chunks_sampled} sampled chunks CBT called "
                f"unchanged differ ({result.expected}); whole disk re-read, CBT reset"
            )


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
        "consistency": run.consistency[0],
        "consistency_reason": run.consistency[1],
        "cbt_audit": run.audit_summary,
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
    enable_cbt: bool = True,
    concurrency: dict[str, int] | None = None,
    stage_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    scan_every: int = 30,
    cbt_audit: str = "0.5",
) -> dict[str, Any]:
    """Back up VM ``vm`` (name or instanceUuid) into ``repo``; returns the run summary.

    ``transport``: ``https`` (LAN, datastore HTTP) or ``direct`` (LAN-free: ``datastore_mounts``
    maps datastore names to local paths; ``remote_device`` names this data mover for the
    licence).  ``quiesce_policy``: ``fail`` or ``crash-consistent`` when quiescing (or a
    pre-freeze script) fails.  ``pre_freeze``/``post_thaw``: commands run in the guest.
    ``concurrency``: snapshot slots per ``host`` and ``datastore`` (see ``vmkeep/tasks/limits.py``).
    ``stage_dir``: staging-proxy mode — copy the snapshot's disks into this local folder, release
    the snapshot, then back up from the copies (see ``vmkeep/tasks/staging.py``).
    ``enable_cbt``: turn CBT on where it is off and supported (default).  ``scan_every``: every
    N-th CBT incremental of a disk reads the whole disk (0: never).  ``cbt_audit``: ``off`` or
    the random share (percent) of chunks audited on CBT incrementals.
    """
    started = time.monotonic()
    audit_policy = AuditPolicy.parse(cbt_audit)
    target = _target(locals())
    refuse_secret_parameters(repo=repo)
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
            info, cbt_status = step(prepare_cbt, session, info, enable_cbt)
            if not cbt_status.enabled and not cbt_status.supported:
                run.warnings.append(f"CBT unavailable, disks read by scan: {cbt_status.reason}")
            previous = previous_point_of(repository, info.instance_uuid)
            guest_creds = None
            if pre_freeze or post_thaw:
                guest_creds = resolve_credentials(guest_user, guest_password_file, None, "GUEST")
            with limits.hold(info.host, [d.datastore for d in info.disks], concurrency):
                try:
                    for attempt in (1, 2):
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
                        retry, cbt_status = _back_up_disks(
                            run, session, info, repository, previous, transport,
                            datastore_mounts, stage_dir, progress, cbt_status, scan_every,
                            audit_policy, attempt,
                        )
                        if not retry:
                            break
                        info, cbt_status = _reset_after_mismatch(run, session, info, cbt_status)
                    run.consistency = _consistency(run, session, info)
                    run.audit_summary = run_summary(
                        {**run.audits, **run.suspects}, set(run.suspects), audit_policy,
                        sum(r.info.size for r in run.results), run.cbt_reset,
                    )
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
            "cbt_suspect": bool(r.info.extra.get("cbt_suspect")),
            "cbt_audit": r.info.extra.get("cbt_audit"),
        }
        for r in run.results
    ]
    summary = {
        "id": point.id,
        "short_id": point.short_id,
        "vm": info.name,
        "instance_uuid": info.instance_uuid,
        "consistency": run.consistency[0] if run.taken else None,
        "consistency_reason": run.consistency[1],
        "disks": disks,
        "cbt_audit": run.audit_summary,
        "snapshot_removed": run.released,
        "warnings": run.warnings,
        "duration_s": round(duration, 3),
    }
    key = "backup-vm-" + info.name.lower().replace(" ", "-")[:40]
    publish_table(key, [_report_row(summary)], f"Backup of {info.name}")
    if run.suspects:  # a lying CBT is worth its own, visible artifact
        publish_markdown(
            key[:48] + "-cbt-audit",
            "\n".join(
                ["## CBT audit mismatch", "", f"VM **{info.name}**: changed-block tracking "
                 "reported unchanged chunks that had changed. The disks below were read whole "
                 "(the restore point is correct) and CBT was "
                 + ("reset." if run.cbt_reset else "**not** reset (see warnings)."), ""]
                + [f"- {w}" for w in run.warnings if w.startswith("CBT audit")]
            ),
            f"CBT audit mismatch on {info.name}",
        )
    return summary


def _back_up_disks(
    run: _Run,
    session: Any,
    info: VMInfo,
    repository: Repository,
    previous: Any,
    transport: str,
    datastore_mounts: dict[str, str] | None,
    stage_dir: str | None,
    progress: Callable[[int], None] | None,
    cbt_status: CbtStatus,
    scan_every: int,
    audit_policy: AuditPolicy | None,
    attempt: int,
) -> tuple[bool, CbtStatus]:
    """Mount, audit and back up every disk of the run's snapshot.  Returns ``(retry, status)``:
    retry when the first attempt's audit found a lying CBT (nothing backed up then)."""
    mounted, mount_warnings = step(
        mount_disks, session, info, run.taken, previous, transport, datastore_mounts,
        cbt_status, scan_every,
    )
    run.warnings.extend(mount_warnings)
    try:
        for disk in mounted:  # second attempt: whatever CBT said, suspect disks are read whole
            if disk.disk.key in run.suspects:
                mode: Mode = "full" if disk.plan.mode == "full" else "scan"
                why = "CBT audit mismatch: whole disk re-read" + (
                    " after a CBT reset" if run.cbt_reset else ""
                )
                disk.plan = DiskPlan(mode, why, None)
        _audit_disks(run, repository, mounted, previous, audit_policy)
        if run.suspects and attempt == 1 and run.taken is not None:
            return True, cbt_status
        if stage_dir and run.taken is not None:  # staging proxy: copy, release early
            mounted = step(
                stage_disks,
                mounted,
                stage_dir,
                run.taken.handle.name,
                repository.config.image_chunk_size,
            )
            _release(run, session, info)
        for disk in mounted:
            found = run.suspects.get(disk.disk.key) or run.audits.get(disk.disk.key)
            audit = disk_record(found, audit_policy, disk.plan.mode)
            run.results.append(
                step(back_up_vm_disk, repository, disk, previous, progress, audit)
            )
    finally:
        for disk in mounted:
            disk.reader.close()
        if stage_dir and run.taken is not None:
            remove_staged(stage_dir, run.taken.handle.name)
    return False, cbt_status


def _reset_after_mismatch(
    run: _Run, session: Any, info: VMInfo, status: CbtStatus
) -> tuple[VMInfo, CbtStatus]:
    """Release the snapshot CBT lied about, reset CBT (off, stun, on, stun) before the second
    attempt; on failure the second attempt still reads every suspect disk whole."""
    _release(run, session, info)
    run.taken, run.released = None, False
    try:
        info, status = step(reset_cbt_task, session, info)
        run.cbt_reset = True
    except VSphereError as exc:
        run.warnings.append(f"CBT reset failed ({exc.get_message()}); disks read whole")
    return info, status


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
        "consistency": summary["consistency"],
        "CBT audit": summary["cbt_audit"].get("status"),
        "snapshot released": summary["snapshot_removed"],
        "warnings": "; ".join(summary["warnings"]),
    }
