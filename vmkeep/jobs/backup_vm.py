"""Job: back up one VM.

Order (the snapshot is held only while data is read — take it late, release it early): find the VM
→ licence check (unless the parent job did; before any change to the VM) → the disks the job
excludes (``exclude_disks``: not read, recorded in the point; every disk excluded is refused here;
``vmkeep/vsphere/disk_selection.py``) → free space on the datastores its snapshot grows on (below
the skip threshold the VM is skipped with nothing changed on it;
``vmkeep/vsphere/datastore_space.py``) → prepare CBT (enable it where it is off and supported: one
stun, recorded) → capture its configuration and vSphere tags → wait while a datastore it
grows on is busy (storage latency control, ``vmkeep/vsphere/datastore_latency.py``) → the
previous point of its chain →
hold the host/datastore slots → pre-freeze → **snapshot** → post-thaw → open the disks (read plan
per disk) → audit CBT → [staging: copy, release] → back up each disk (a step per disk, named ``disk
<n> <file>``; their reads slowed while a datastore they come from answers at or above
``datastore_latency_throttle_ms``: :class:`~vmkeep.vsphere.datastore_latency.ReadThrottle`) →
**release** → give the slots back → commit the restore point (manifest last) → the
post-backup script in the guest (``post_backup``: only after a committed point).

CBT is on by default (``enable_cbt``; see ``vmkeep/vsphere/cbt.py`` for VMware's rules) and every
CBT incremental is audited first (``vmkeep/storage/cbt_audit.py``, ``cbt_audit``).  On an audit
mismatch the job releases its snapshot, resets CBT on the VM (off, stun, on, stun), takes a new
snapshot and reads every disk whole (the epoch changed): the committed point is correct, its
disks carry ``cbt_suspect`` and the new epoch's change ids, so the next run is ``cbt`` again.
Every ``scan_every``-th CBT incremental of a disk is a full comparison (``scan``) instead.

Release is guaranteed three ways: ``finally`` here (success, failure, cancellation inside
Python), the flow's Prefect ``on_crashed``/``on_cancellation`` hooks (:mod:`vmkeep.flows.backup_vm`)
and the snapshot sweep for what no hook saw (kill -9): every snapshot is named
``vmkeep-<run id>`` with a marker, so the sweep removes exactly vmkeep's leftovers.  A failed
release is a warning in the summary, in the run log and in the restore point, naming the snapshot
and when the sweep will remove it.

The VM's chain is keyed by its instanceUuid (``meta.instance_uuid``), so renames and vMotion keep
it; the previous point feeds CBT (``cbt``), the xxh3 scan (``scan``) or nothing (``full``), as
recorded per disk with the reason.  The point's consistency label (crash / filesystem /
application, ``vmkeep/vsphere/consistency.py``) says what the snapshot guarantees.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from vmkeep import clock
from vmkeep.disks.mounts import check_direct_mount
from vmkeep.jobs import licence, vm_retries
from vmkeep.jobs.commit import commit
from vmkeep.jobs.specs import BackupVmSpec
from vmkeep.markdown import literal
from vmkeep.runtime.base import Runtime
from vmkeep.settings import settings
from vmkeep.storage import target_space
from vmkeep.storage.cbt_audit import AuditPolicy, AuditResult, disk_record, run_summary
from vmkeep.storage.change_rate import Written, change_warnings
from vmkeep.storage.disk_backup import DiskResult
from vmkeep.storage.rate_limit import Pacer
from vmkeep.storage.read_plan import DiskCbtState
from vmkeep.storage.repository import PointSummary, Repository
from vmkeep.tasks import limits
from vmkeep.tasks.catalog import catalog_items
from vmkeep.tasks.image import commit_restore_point
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.tasks.staging import remove_staged, stage_disks
from vmkeep.tasks.vcenter import open_session, resolve_credentials
from vmkeep.tasks.vm import (
    MountedDisk,
    TakenSnapshot,
    audit_vm_disk,
    back_up_vm_disk,
    capture_vm_config,
    check_datastore_space,
    exclude_deleted,
    exclude_swap,
    find_vm_task,
    guest_script,
    mount_disks,
    prepare_cbt,
    read_vm_tags,
    release_snapshot,
    reset_cbt_task,
    set_backup_attribute,
    take_snapshot,
    wait_for_datastores,
)
from vmkeep.vsphere import consistency, datastore_latency
from vmkeep.vsphere.cbt import CbtStatus
from vmkeep.vsphere.disk_selection import (
    ExcludedDisk,
    excluded_disks,
    refuse_encrypted_disks,
    refuse_shared_disks,
    refuse_virtual_rdms,
)
from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.inventory import VMInfo

#: the hourly sweep deployment (deployments/prefect.yaml): minute past the hour, minimum age
SWEEP_MINUTE = 15
SWEEP_AGE = timedelta(minutes=120)


def chain_of(repository: Repository, instance_uuid: str) -> list[PointSummary]:
    """The restore points of the VM's chain (by instanceUuid: renames and vMotion keep it),
    oldest first."""
    return [
        p
        for p in repository.list_points()
        if p.kind == "vm" and p.meta.get("instance_uuid") == instance_uuid
    ]


def previous_point_of(repository: Repository, instance_uuid: str) -> Any:
    """The newest restore point of the VM's chain (by instanceUuid), or None."""
    points = chain_of(repository, instance_uuid)
    return repository.load_point(points[-1].id) if points else None


def sweep_deadline(now: datetime) -> datetime:
    """When the hourly sweep removes a snapshot left at ``now`` (first run past SWEEP_AGE)."""
    due = now + SWEEP_AGE
    run = due.replace(minute=SWEEP_MINUTE, second=0, microsecond=0)
    return run if run >= due else run + timedelta(hours=1)


@dataclass
class _Run:
    """What one run has done so far (for the release, the restore point and the summary)."""

    warnings: list[str]
    taken: TakenSnapshot | None = None
    taken_at: float = 0.0  # monotonic time the current snapshot existed
    released: bool = False
    release_failed: bool = False  # tried and failed: not tried again (the sweep's job now)
    left: str | None = None  # the warning naming a snapshot that could not be released
    held_s: float = 0.0  # snapshot lifetime, summed over both attempts of a CBT reset
    results: list[DiskResult] = field(default_factory=list)
    pre_freeze_ok: bool = False
    suspects: dict[int, AuditResult] = field(default_factory=dict)  # disk key -> mismatch
    consistency: tuple[str, str] = ("crash", "")
    audit_summary: dict[str, Any] = field(default_factory=dict)
    audits: dict[int, AuditResult] = field(default_factory=dict)
    cbt_reset: bool = False
    excluded: list[ExcludedDisk] = field(default_factory=list)  # the job's disk exclusions
    guest_creds: Any = None  # for the guest scripts (resolved before anything changes)
    throttle: dict[str, Any] | None = None  # storage latency control of the reads, if slowed


def _freeze_and_snapshot(
    rt: Runtime, spec: BackupVmSpec, run: _Run, session: Any, info: VMInfo, guest_creds: Any
) -> None:
    """pre-freeze → snapshot (quiesce policy) → post-thaw; script failures per policy."""
    quiesce = spec.quiesce
    if spec.pre_freeze:
        try:
            rt.step(guest_script, session, info, guest_creds, spec.pre_freeze)
            run.pre_freeze_ok = True
        except VSphereError as exc:
            if spec.quiesce_policy != "crash-consistent":
                raise
            run.warnings.append(f"pre-freeze script failed: {exc.get_message()}")
            quiesce = False
    try:
        run.taken = rt.step(
            take_snapshot, session, info, rt.run_id, quiesce, spec.quiesce_policy
        )
        run.taken_at = time.monotonic()
        run.warnings.extend(run.taken.warnings)
        rt.log.info(
            "%s: snapshot %s taken (%s-consistent)",
            info.name,
            run.taken.handle.name,
            run.taken.consistency,
        )
    finally:
        if spec.post_thaw:
            try:
                rt.step(guest_script, session, info, guest_creds, spec.post_thaw)
            except VSphereError as exc:
                run.warnings.append(f"post-thaw script failed: {exc.get_message()}")


def _release(rt: Runtime, run: _Run, session: Any, info: VMInfo) -> None:
    """Remove the run's snapshot; on failure say which one remains and when the sweep acts."""
    if run.taken is None or run.released or run.release_failed:
        return
    name = run.taken.handle.name
    run.held_s += time.monotonic() - run.taken_at  # from its creation to the release call
    try:
        run.released = rt.step(release_snapshot, session, info, run.taken)
    except Exception as exc:
        by = sweep_deadline(clock.now()).strftime("%Y-%m-%d %H:%M UTC")
        warning = (
            f"snapshot {name} of {info.name} not released ({exc}); the snapshot sweep removes it "
            f"(hourly deployment: by {by}; or now: vmkeep sweep)"
        )
        run.warnings.append(warning)
        run.left = warning
        run.release_failed = True
        rt.log.warning("%s", warning)
        rt.publish_markdown(
            "vmkeep-snapshot-left",
            f"# Snapshot left on {literal(info.name)}\n\n{literal(warning)}\n",
            f"snapshot {name} not released",
        )
    else:
        rt.log.info("%s: snapshot %s released", info.name, name)


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


def _point_meta(
    spec: BackupVmSpec, info: VMInfo, run: _Run, config: dict[str, Any]
) -> dict[str, Any]:
    return {
        "instance_uuid": info.instance_uuid,
        "vm_name": info.name,
        "host": info.host,
        "cluster": info.cluster,
        "datacenter": info.datacenter,
        "folder": info.folder,
        "vapp": info.vapp,
        "guest_id": info.guest_id,
        "consistency": run.consistency[0],
        "consistency_reason": run.consistency[1],
        "cbt_audit": run.audit_summary,
        "transport": spec.transport,
        "remote_device": spec.remote_device if spec.transport == "direct" else None,
        "snapshot": run.taken.handle.name if run.taken else None,
        "warnings": run.warnings,
        "excluded_disks": [e.record() for e in run.excluded],
        "vm_config": config,
    }


def disk_step_name(mounted: MountedDisk) -> str:
    """``disk 0 [ds1] linux01/linux01.vmdk``: which disk a step reads, at a glance."""
    return f"disk {mounted.index} {mounted.disk.file_name or mounted.disk.label}"


def _audit_disks(
    rt: Runtime,
    run: _Run,
    repository: Repository,
    mounted: list[MountedDisk],
    previous: Any,
    policy: AuditPolicy | None,
) -> None:
    """Audit every CBT-read disk; mismatches go to ``run.suspects`` (first attempt only)."""
    run.audits = {}
    for disk in mounted:
        seed = zlib.crc32(f"{run.taken.handle.name if run.taken else ''}:{disk.disk.key}".encode())
        result = rt.step(
            audit_vm_disk,
            repository,
            disk,
            previous,
            policy,
            seed,
            step_name=f"audit-cbt {disk_step_name(disk)}",
        )
        if result is None:
            continue
        run.audits[disk.disk.key] = result
        if result.suspect and disk.disk.key not in run.suspects:
            run.suspects[disk.disk.key] = result
            warning = (
                f"CBT audit: disk {disk.disk.key} ({disk.disk.label}) is cbt-suspect: "
                f"{result.mismatches} of {result.chunks_sampled} sampled chunks CBT called "
                f"unchanged differ ({result.expected}); whole disk re-read, CBT reset"
            )
            run.warnings.append(warning)
            rt.log.warning("%s", warning)


def _latency_throttle(
    rt: Runtime, session: Any, info: VMInfo, mounted: list[MountedDisk], staged: bool
) -> datastore_latency.ReadThrottle:
    """Storage latency control while the disks are read (:class:`ReadThrottle`), from the
    settings: the datastores the mounted disks are read from, on the VM's host — off when they
    are read from a staging copy (the datastores are no longer read then)."""
    conf = settings()
    policy = datastore_latency.ThrottlePolicy(
        0.0 if staged else conf.datastore_latency_throttle_ms, conf.datastore_latency_poll_s,
        conf.datastore_latency_floor_kib * 1024)
    stores = sorted({m.disk.datastore for m in mounted if m.disk.datastore})
    return datastore_latency.ReadThrottle(session, info, stores, policy, log=rt.log.info)


def _read_disks(
    rt: Runtime,
    spec: BackupVmSpec,
    run: _Run,
    repository: Repository,
    mounted: list[MountedDisk],
    previous: Any,
    policy: AuditPolicy | None,
    pacer: Pacer | None = None,
) -> None:
    for disk in mounted:
        how = disk.plan.transport
        rt.log.info(
            "%s via %s (%s): %s (%s)", disk_step_name(disk),
            how.name if how else spec.transport, how.reason if how else "requested",
            disk.plan.mode, disk.plan.reason,
        )
        found = run.suspects.get(disk.disk.key) or run.audits.get(disk.disk.key)
        sequential = not getattr(disk.reader, "random_access", True)  # nfc: no samples
        audit = disk_record(found, policy, disk.plan.mode + (" nfc" if sequential else ""))
        progress = rt.progress(f"{disk_step_name(disk)} ({disk.plan.mode})", disk.disk.capacity)
        try:
            result = rt.step(
                back_up_vm_disk,
                repository,
                disk,
                previous,
                progress.advance,
                audit,
                pacer,
                step_name=disk_step_name(disk),
            )
        except BaseException:
            progress.close(failed=True)
            raise
        progress.close()
        rt.log.info(
            "%s: read %d bytes, %d new, %d stored",
            disk_step_name(disk),
            result.stats.bytes_read,
            result.stats.bytes_new,
            result.stats.bytes_stored,
        )
        run.results.append(result)


def _back_up_disks(
    rt: Runtime,
    spec: BackupVmSpec,
    run: _Run,
    session: Any,
    info: VMInfo,
    repository: Repository,
    previous: Any,
    cbt_status: CbtStatus,
    policy: AuditPolicy | None,
    attempt: int,
) -> bool:
    """Mount, audit and back up every disk of the run's snapshot.  True: retry — the first
    attempt's audit found a lying CBT (nothing backed up then)."""
    mounted, mount_warnings = rt.step(
        mount_disks,
        session,
        info,
        run.taken,
        previous,
        spec.transport,
        spec.datastore_mounts,
        cbt_status,
        spec.scan_every,
        spec.mover,
        rt.run_id,
        _rereads(run),
        "an active full: read whole as asked" if spec.read_whole else None,
        [e.disk.key for e in run.excluded],
    )
    run.warnings.extend(mount_warnings)
    try:
        if spec.exclude_swap:
            mounted = _exclude_swap(rt, run, mounted)
        if spec.exclude_deleted:
            mounted = _exclude_deleted(rt, run, mounted, info, repository.config.image_chunk_size)
        _audit_disks(rt, run, repository, mounted, previous, policy)
        if run.suspects and attempt == 1 and run.taken is not None:
            return True
        if spec.stage_dir and run.taken is not None:  # staging proxy: copy, release early
            mounted = rt.step(
                stage_disks,
                mounted,
                spec.stage_dir,
                run.taken.handle.name,
                repository.config.image_chunk_size,
            )
            _release(rt, run, session, info)
        staged = bool(spec.stage_dir and run.taken is not None)
        with _latency_throttle(rt, session, info, mounted, staged) as throttle:
            _read_disks(rt, spec, run, repository, mounted, previous, policy, throttle.pacer)
        run.warnings.extend(throttle.warnings)
        run.throttle = throttle.summary()
        if run.throttle:
            run.warnings.append(
                f"reads slowed for {run.throttle['throttled_s']:.0f} s while "
                f"{datastore_latency.describe(run.throttle['peak_ms'])} answered at or above "
                f"{run.throttle['throttle_ms']:g} ms (VMKEEP_DATASTORE_LATENCY_THROTTLE_MS)")
    finally:
        for disk in mounted:
            disk.reader.close()
        if spec.stage_dir and run.taken is not None:
            remove_staged(spec.stage_dir, run.taken.handle.name)
    return False


def _exclude_swap(rt: Runtime, run: _Run, mounted: list[MountedDisk]) -> list[MountedDisk]:
    """Each disk with its guest's swap to be recorded as zeros (``--exclude-swap``); what could
    not be excluded becomes a warning."""
    out, notes = rt.step(exclude_swap, mounted, step_name="swap")
    for found, disk_notes in zip(out, notes, strict=True):
        run.warnings.extend(f"disk {found.disk.key} ({found.disk.label}): {n}" for n in disk_notes)
        if found.swap and found.swap["bytes"]:
            rt.log.info("%s: swap recorded as zeros: %d bytes (%s)", disk_step_name(found),
                        found.swap["bytes"], ", ".join(a["what"] for a in found.swap["areas"]))
    return out


def _exclude_deleted(
    rt: Runtime, run: _Run, mounted: list[MountedDisk], info: VMInfo, chunk_size: int
) -> list[MountedDisk]:
    """Each disk with the free blocks of its NTFS, ext, XFS and Btrfs volumes to be recorded as
    zeros (``--exclude-deleted``) — only from a consistent snapshot: quiesced, or of a VM that is
    not running; else read as usual, with a warning."""
    why = None
    if run.taken is not None and info.power_state == "poweredOn" \
            and run.taken.consistency != "application":
        why = "the snapshot is not quiesced (a file system's bitmap may lag data already written)"
        run.warnings.append(f"deleted blocks read as usual: {why}")
    out, notes = rt.step(exclude_deleted, mounted, chunk_size, why, step_name="deleted blocks")
    for found, disk_notes in zip(out, notes, strict=True):
        if why is None:
            run.warnings.extend(
                f"disk {found.disk.key} ({found.disk.label}): {n}" for n in disk_notes)
        if found.deleted and found.deleted["bytes"]:
            rt.log.info("%s: deleted blocks recorded as zeros: %d bytes", disk_step_name(found),
                        found.deleted["bytes"])
    return out


def _rereads(run: _Run) -> dict[int, str]:
    """Second attempt: whatever CBT says, the disks it was caught lying about are read whole."""
    why = "CBT audit mismatch: whole disk re-read" + (" after a CBT reset" if run.cbt_reset else "")
    return {key: why for key in run.suspects}


def _reset_after_mismatch(
    rt: Runtime, run: _Run, session: Any, info: VMInfo, status: CbtStatus
) -> tuple[VMInfo, CbtStatus]:
    """Release the snapshot CBT lied about, reset CBT (off, stun, on, stun) before the second
    attempt; on failure the second attempt still reads every suspect disk whole."""
    _release(rt, run, session, info)
    run.taken, run.released, run.release_failed = None, False, False
    try:
        info, status = rt.step(reset_cbt_task, session, info)
        run.cbt_reset = True
    except VSphereError as exc:
        run.warnings.append(f"CBT reset failed ({exc.get_message()}); disks read whole")
    return info, status


def _snapshot_and_read(
    rt: Runtime,
    spec: BackupVmSpec,
    run: _Run,
    session: Any,
    info: VMInfo,
    repository: Repository,
    previous: Any,
    cbt_status: CbtStatus,
    policy: AuditPolicy | None,
) -> VMInfo:
    """Everything that happens while a snapshot exists (slots held by the caller); returns the
    VM as it is afterwards (a CBT reset changes it)."""
    try:
        for attempt in (1, 2):
            if info.template:
                run.warnings.append("template: backed up without a snapshot")
            else:
                _freeze_and_snapshot(rt, spec, run, session, info, run.guest_creds)
            retry = _back_up_disks(
                rt, spec, run, session, info, repository, previous, cbt_status, policy, attempt
            )
            if not retry:
                break
            info, cbt_status = _reset_after_mismatch(rt, run, session, info, cbt_status)
    finally:
        _release(rt, run, session, info)
    return info


def backup_vm(spec: BackupVmSpec, rt: Runtime) -> dict[str, Any]:
    """Back up VM ``spec.vm`` (name or instanceUuid) into ``spec.repo``; returns the summary
    (``attempts``: how many it took).  A failed attempt is retried ``spec.retries`` times,
    ``spec.retry_wait_s`` apart, when a pause may mend it (:mod:`vmkeep.jobs.vm_retries`)."""
    rules = vm_retries.policy(spec.retries, spec.retry_wait_s)
    for attempt in range(1, rules.attempts + 1):
        try:
            summary = _attempt(spec, rt)
        except Exception as exc:
            if not rules.should_retry(exc, attempt, vm_retries.worth_retrying):
                raise
            vm_retries.pause_before_retry(rt, rules, attempt,
                                          [(spec.vm, vm_retries.message_of(exc))])
        else:
            summary["attempts"] = attempt
            return summary
    raise AssertionError("unreachable")


def _attempt(spec: BackupVmSpec, rt: Runtime) -> dict[str, Any]:
    """One attempt of :func:`backup_vm`."""
    started = time.monotonic()
    policy = spec.audit_policy()
    refuse_secret_parameters(repo=spec.repo)
    if spec.transport == "direct":  # before anything touches vCenter: what is mounted here?
        for datastore, path in (spec.datastore_mounts or {}).items():
            check_direct_mount(datastore, path, allow_vmfs=spec.allow_vmfs_mount)
    repository = Repository.open(spec.repo)
    session = open_session(spec.vcenter)
    run = _Run(warnings=[])
    try:
        with repository.lock("shared") as repo_lock:
            info = rt.step(find_vm_task, session, spec.vm)
            if not spec.licence_checked:
                licence.check(  # before any change to the VM, snapshot, staging copy or read
                    rt,
                    image_vms=[
                        {"host": info.host or "", "name": info.name, "uuid": info.instance_uuid}
                    ],
                    remote_device=spec.remote_device if spec.transport == "direct" else None,
                    catalog=catalog_items(repository),
                )
            refuse_shared_disks(info)  # before CBT's stun, the snapshot, anything
            run.excluded = excluded_disks(info, spec.exclude_disks, run.warnings)
            refuse_encrypted_disks(info, spec.transport, run.excluded)
            refuse_virtual_rdms(info, spec.transport, run.excluded)
            if spec.pre_freeze or spec.post_thaw or spec.post_backup:
                run.guest_creds = resolve_credentials(
                    spec.guest_user, spec.guest_password_file, None, "GUEST")
            if not info.template:  # a template is read without a snapshot
                run.warnings.extend(rt.step(check_datastore_space, session, info))
            info, cbt_status = rt.step(prepare_cbt, session, info, spec.enable_cbt)
            if not cbt_status.enabled and not cbt_status.supported:
                run.warnings.append(f"CBT unavailable, disks read by scan: {cbt_status.reason}")
            config = rt.step(capture_vm_config, session, info)
            if spec.vm_tags is not None:  # read by backup-vms for all its VMs at once
                vm_tags, tags_warning = list(spec.vm_tags), None
            else:
                vm_tags, tags_warning = rt.step(read_vm_tags, session, info)
            run.warnings.extend([tags_warning] if tags_warning else [])
            previous = previous_point_of(repository, info.instance_uuid)
            datastores = [d.datastore for d in info.disks]
            if not info.template:  # storage latency control: no new snapshot on a busy datastore
                waited, latency_warnings = rt.step(wait_for_datastores, session, info)
                run.warnings.extend(latency_warnings)
                if waited:
                    rt.log.info("%s: waited %.0f s for busy datastores", info.name, waited)
            with limits.hold(rt, info.host, datastores, spec.concurrency):
                info = _snapshot_and_read(
                    rt, spec, run, session, info, repository, previous, cbt_status, policy
                )
            run.consistency = _consistency(run, session, info)
            run.audit_summary = run_summary(
                {**run.audits, **run.suspects},
                set(run.suspects),
                policy,
                sum(r.info.size for r in run.results),
                run.cbt_reset,
            )
            run.warnings.extend(change_warnings(  # recorded in the point too
                chain_of(repository, info.instance_uuid), Written.of_results(run.results)))
            run.warnings.extend(target_space.backup_warnings(repository))
            repo_lock.ensure()  # our shared lock still stands: prune saw this backup
            point = commit(
                rt,
                commit_restore_point,
                info.name,
                repository,
                info.name,
                run.results,
                kind="vm",
                parent=previous.id if previous else None,
                meta=_point_meta(spec, info, run, config) | {"vm_tags": vm_tags},
            )
            _record_in_vcenter(rt, run, session, info, point, repository)
        if spec.post_backup:
            _post_backup(rt, spec, run, session, info)
    finally:
        session.close()
    rt.log.info("%s: restore point %s committed", info.name, point.id)
    for warning in run.warnings:
        rt.log.warning("%s: %s", info.name, warning)
    summary = _summary(point, info, run, time.monotonic() - started)
    key = "backup-vm-" + _key(info.name)
    rt.publish_table(key, [report_row(summary)], f"Backup of {info.name}")
    if run.suspects:  # a lying CBT is worth its own, visible artifact
        rt.publish_markdown(
            key[:48] + "-cbt-audit",
            "\n".join(
                [
                    "## CBT audit mismatch",
                    "",
                    f"VM **{literal(info.name)}**: changed-block tracking reported unchanged "
                    "chunks that had changed. The disks below were read whole (the restore "
                    "point is correct) and CBT was "
                    + ("reset." if run.cbt_reset else "**not** reset (see warnings)."),
                    "",
                ]
                + [f"- {w}" for w in run.warnings if w.startswith("CBT audit")]
            ),
            f"CBT audit mismatch on {info.name}",
        )
    return summary


def _post_backup(rt: Runtime, spec: BackupVmSpec, run: _Run, session: Any, info: VMInfo) -> None:
    """The post-backup command in the guest, once the point is committed (and only then: e.g.
    truncating database logs) — not after a crash-consistent point, which a database could not
    be recovered from without the logs; a failure is a warning — the point stands."""
    if info.template or info.power_state != "poweredOn":
        run.warnings.append(f"post-backup script not run: the VM is {info.power_state}")
        return
    if run.consistency[0] == "crash":
        run.warnings.append("post-backup script not run: the restore point is only "
                            f"crash-consistent ({run.consistency[1]})")
        return
    try:
        rt.step(guest_script, session, info, run.guest_creds, spec.post_backup,
                step_name=f"post-backup script {info.name}")
    except VSphereError as exc:
        run.warnings.append(f"post-backup script failed: {exc.get_message()}")


def _record_in_vcenter(
    rt: Runtime, run: _Run, session: Any, info: VMInfo, point: Any, repository: Repository
) -> None:
    """The committed point in the VM's custom attribute ``VMKEEP_VM_ATTRIBUTE`` (when set), for
    the vSphere Client; a refusal is a warning — the point stands."""
    name = settings().vm_attribute
    if not name:
        return
    value = (f"{clock.now():%Y-%m-%d %H:%M} UTC: restore point {point.short_id} "
             f"({run.consistency[0]}-consistent), vmkeep, {repository.backend.location}")
    try:
        rt.step(set_backup_attribute, session, info, name, value)
    except VSphereError as exc:
        run.warnings.append(f"custom attribute {name!r} not set: {exc.get_message()}")


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())[:40].strip("-") or "vm"


def _summary(point: Any, info: VMInfo, run: _Run, duration: float) -> dict[str, Any]:
    disks = [
        {
            "key": r.info.extra.get("key"),
            "label": r.info.name,
            "mode": r.info.mode,
            "reason": r.info.reason,
            "bytes_read": r.stats.bytes_read,
            "bytes_new": r.stats.bytes_new,
            "bytes_stored": r.stats.bytes_stored,
            "bytes_excluded": r.stats.bytes_excluded,
            "size": r.info.size,
            "duration_s": round(r.stats.duration_s, 3),
            "cbt_suspect": state.suspect,
            "cbt_audit": dict(state.audit) if state.audit is not None else None,
            "transport": state.transport.name if state.transport else None,
        }
        for r, state in ((r, DiskCbtState.of_disk(r.info)) for r in run.results)
    ]
    return {
        "id": point.id,
        "short_id": point.short_id,
        "vm": info.name,
        "instance_uuid": info.instance_uuid,
        "consistency": run.consistency[0] if run.taken else None,
        "consistency_reason": run.consistency[1],
        "disks": disks,
        "excluded_disks": [e.record() for e in run.excluded],
        "cbt_audit": run.audit_summary,
        "snapshot_removed": run.released,
        "snapshot_left": run.left,
        "snapshot_held_s": round(run.held_s, 3),
        "latency_throttle": run.throttle,
        "warnings": run.warnings,
        "duration_s": round(duration, 3),
    }


def report_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The artifact row of one VM backup.  Ratios (docs/prefect.md "Artifacts"):

    * ``dedupe ratio`` = bytes read / bytes new — how much of what was read was already stored;
    * ``compression ratio`` = bytes new / bytes stored — what compression saved on the new data.

    Both are ``None`` when their divisor is 0 (nothing new, nothing stored).
    """
    read = sum(d["bytes_read"] for d in summary["disks"])
    new = sum(d["bytes_new"] for d in summary["disks"])
    stored = sum(d["bytes_stored"] for d in summary["disks"])
    excluded = sum(d.get("bytes_excluded", 0) for d in summary["disks"])
    secs = max(summary["duration_s"], 1e-6)
    return {
        "VM": summary["vm"],
        "restore point": summary["id"],
        "disks": len(summary["disks"]),
        "mode": ", ".join(f"{d['mode']} ({d['reason']})" for d in summary["disks"]),
        "read MB": round(read / 1e6, 1),
        "new MB": round(new / 1e6, 1),
        "stored MB": round(stored / 1e6, 1),
        "excluded MB": round(excluded / 1e6, 1),
        "dedupe ratio": round(read / new, 2) if new else None,
        "compression ratio": round(new / stored, 2) if stored else None,
        "duration s": summary["duration_s"],
        "MB/s": round(read / 1e6 / secs, 1),
        "consistency": summary.get("consistency"),
        "CBT audit": (summary.get("cbt_audit") or {}).get("status"),
        "snapshot held s": summary.get("snapshot_held_s"),
        "snapshot released": summary.get("snapshot_removed"),
        "warnings": "; ".join(summary["warnings"]),
    }
