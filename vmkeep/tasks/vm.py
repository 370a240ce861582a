"""The steps of a VM image backup: one step per VM action or per disk (a Prefect task each
when the job runs under :class:`~vmkeep.runtime.prefect_runtime.PrefectRuntime`).

Every step takes a live :class:`~vmkeep.vsphere.connection.Session` and plain data; the work is
done by ``vmkeep.vsphere`` and ``vmkeep.storage``.  Retries apply only to transient errors
(dropped connections, expired sessions); snapshot creation is idempotent per run id, so a retried
step never stacks snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

from vmkeep.disks import swap
from vmkeep.disks.area_scan import SearchedDisk
from vmkeep.runtime.base import NO_RETRY, RetryPolicy, step_def
from vmkeep.settings import settings
from vmkeep.storage import cbt_audit
from vmkeep.storage.disk_backup import DiskResult, backup_disk, make_pread, zeroed_after
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.rate_limit import Pacer, both, source_reads
from vmkeep.storage.read_plan import BaseRef, CbtOrigin, DiskCbtState, ReadPlan, Transport
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import (
    attributes,
    cbt,
    datastore_space,
    guestops,
    hosts,
    hotadd,
    snapshots,
    transport_choice,
    transports,
    vmconfig,
)
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import EncryptedDiskUnreadable, QuiesceFailed, VSphereError
from vmkeep.vsphere.inventory import VirtualDisk, VMInfo, find_vm
from vmkeep.vsphere.nfc import NfcDiskSource, NfcExport
from vmkeep.vsphere.vm_lookup import resolve_vm

log = logging.getLogger(__name__)


@dataclass
class TakenSnapshot:
    handle: snapshots.SnapshotHandle
    consistency: str  # "application" (quiesced) or "crash"
    warnings: list[str] = field(default_factory=list)


@dataclass
class MountedDisk:
    """A snapshot disk, opened, with its read plan (decided by :func:`cbt.plan_disk`; the plan's
    ``transport`` says how ``reader`` fetches it) and the previous point's typed CBT record."""

    disk: VirtualDisk
    plan: ReadPlan
    reader: transports.ExtentReader | NfcDiskSource
    index: int
    cbt_enabled: bool
    origin: CbtOrigin | None = None
    previous: DiskCbtState | None = None  # this disk in the previous restore point
    swap: dict[str, Any] | None = None  # what :func:`exclude_swap` found (the point's record)
    deleted: dict[str, Any] | None = None  # what :func:`exclude_deleted` found (the record)

    @property
    def incrementals(self) -> int:
        """Consecutive CBT incrementals of this disk before this run."""
        return self.previous.incrementals if self.previous else 0

    @property
    def previous_ranges(self) -> list[list[int]]:
        """The chunk ranges the previous run took from CBT (the audit samples neighbours)."""
        return [list(r) for r in self.previous.changed_ranges] if self.previous else []


@step_def("find-vm")
def find_vm_task(session: Session, vm: str, enable_cbt: bool = False) -> VMInfo:
    """The VM by instanceUuid (preferred: survives renames and vMotion) or by unique name
    (:func:`vmkeep.vsphere.vm_lookup.resolve_vm`)."""
    info = resolve_vm(session, vm)
    if enable_cbt and not info.template and cbt.enable_cbt(session, info.ref):
        log.info("enabled CBT on %s", info.name)
        info = find_vm(session, info.instance_uuid)
    return info


@step_def("check-datastore-space")
def check_datastore_space(session: Session, vm: VMInfo) -> list[str]:
    """Warnings about the free space where ``vm``'s snapshot would grow; raises
    ``DatastoreSpaceLow`` (skip the VM) below ``VMKEEP_DATASTORE_SKIP_FREE_PERCENT``
    (:mod:`vmkeep.vsphere.datastore_space`).  Read-only."""
    conf = settings()
    return datastore_space.check(session, vm, warn_percent=conf.datastore_warn_free_percent,
                                 skip_percent=conf.datastore_skip_free_percent)


@step_def("wait-for-datastores", NO_RETRY)
def wait_for_datastores(session: Session, vm: VMInfo) -> tuple[float, list[str]]:
    """Wait while a datastore ``vm``'s snapshot grows on is busy — its latency on the VM's host
    at or above ``VMKEEP_DATASTORE_LATENCY_STOP_MS`` — for at most
    ``VMKEEP_DATASTORE_LATENCY_WAIT_S`` (:mod:`vmkeep.vsphere.datastore_latency`): the seconds
    waited and the warnings.  Read-only; not retried (it is itself a wait)."""
    from vmkeep.vsphere import datastore_latency

    conf = settings()
    policy = datastore_latency.LatencyPolicy(
        conf.datastore_latency_stop_ms, conf.datastore_latency_wait_s,
        conf.datastore_latency_poll_s)
    return datastore_latency.wait_while_busy(
        session, vm, datastore_space.snapshot_datastores(vm), policy, log=log.info)


@step_def("set-vm-attribute")
def set_backup_attribute(session: Session, vm: VMInfo, name: str, value: str) -> None:
    """Write ``value`` into the VM's custom attribute ``name`` (:mod:`vmkeep.vsphere.attributes`);
    raises ``VSphereError``."""
    attributes.set_vm_attribute(session, vm.ref, name, value)


@step_def("prepare-cbt")
def prepare_cbt(session: Session, vm: VMInfo, enable: bool) -> tuple[VMInfo, cbt.CbtStatus]:
    """CBT on by default (with its stun cycle) where the VM supports it; never fails for an
    unsupported VM (it is read by ``scan``, the reason recorded)."""
    if vm.template:
        return vm, cbt.CbtStatus(vm.cbt_enabled, True, "template: read without a snapshot")
    status = cbt.ensure_cbt(session, vm.ref, enable=enable)
    if status.enabled_now:
        log.info("enabled CBT on %s", vm.name)
        vm = find_vm(session, vm.instance_uuid)
    return vm, status


@step_def("reset-cbt")
def reset_cbt_task(session: Session, vm: VMInfo) -> tuple[VMInfo, cbt.CbtStatus]:
    """After a CBT audit mismatch: off, stun, on, stun — a new tracking epoch."""
    status = cbt.reset_cbt(session, vm.ref)
    log.warning("reset CBT on %s after an audit mismatch", vm.name)
    return find_vm(session, vm.instance_uuid), status


def _searchable(mounted: list[MountedDisk]) -> list[SearchedDisk]:
    """The disks a search reads — all but those read as a stream (nfc) — named by their index
    in ``mounted``."""
    return [SearchedDisk(str(i), make_pread(d.reader), d.disk.capacity)
            for i, d in enumerate(mounted) if getattr(d.reader, "random_access", True)]


@step_def("exclude-swap")
def exclude_swap(mounted: list[MountedDisk]) -> tuple[list[MountedDisk], list[list[str]]]:
    """The VM's disks with its guest's swap (:func:`vmkeep.disks.swap.find_swap_disks`, read
    from the snapshot; the disks' volumes together, so a swap file in a volume group spanning
    them is found) recorded as zeros instead of read — each plan's ``zeroed`` areas — and each
    disk's notes on what was left whole.  A stream (nfc) cannot be searched: read whole, with a
    note.  Reads only guest metadata; retried as a whole (nothing is written)."""
    found = swap.find_swap_disks(_searchable(mounted))
    out, notes = [], []
    for i, disk in enumerate(mounted):
        scan = found.get(str(i))
        if scan is None:  # not searchable
            scan = swap.SwapScan([], ["read as a stream (nfc): swap not looked for, read whole"])
        out.append(replace(disk, plan=disk.plan.without(scan.extents), swap=scan.record()))
        notes.append(scan.notes)
    return out, notes


@step_def("exclude-deleted")
def exclude_deleted(
    mounted: list[MountedDisk], chunk_size: int, inconsistent: str | None
) -> tuple[list[MountedDisk], list[list[str]]]:
    """The VM's disks with the free blocks of their NTFS, ext, XFS and Btrfs volumes
    (:func:`vmkeep.disks.deleted_blocks.find_deleted_disks`, read from the snapshot; the disks'
    volumes together, so a volume group spanning them is searched) recorded as zeros instead of
    read — added to each plan's ``zeroed`` areas — and each disk's notes on what was read as
    usual.  ``inconsistent``: why the snapshot may not be searched (crash-consistent), or None.
    A stream (nfc) cannot be searched.  Reads only guest metadata; retried as a whole."""
    from vmkeep.disks import deleted_blocks

    found = {} if inconsistent is not None else deleted_blocks.find_deleted_disks(
        _searchable(mounted), chunk_size)
    out, notes = [], []
    for i, disk in enumerate(mounted):
        scan = found.get(str(i))
        if scan is None:  # not searched at all, or not searchable
            scan = deleted_blocks.not_searched(inconsistent or "read as a stream (nfc)")
        plan = disk.plan.without([*disk.plan.zeroed, *scan.extents])
        out.append(replace(disk, plan=plan, deleted=scan.record()))
        notes.append(scan.notes)
    return out, notes


@step_def("audit-cbt")
def audit_vm_disk(
    repo: Repository,
    mounted: MountedDisk,
    previous: RestorePoint | None,
    policy: cbt_audit.AuditPolicy | None,
    seed: int,
) -> cbt_audit.AuditResult | None:
    """The CBT truth audit of one disk where its plan asks for one (``plan.audit``: CBT
    incrementals; full reads trusting another's ``"*"``); None when not applicable or off."""
    plan = mounted.plan
    if policy is None or plan.audit is None or plan.extents is None:
        return None
    if not getattr(mounted.reader, "random_access", True):
        return None  # no audit of sequential (nfc) streams: samples need random reads
    parent = _base_chunks(previous, plan) if plan.audit == "previous point" else None
    if plan.audit == "previous point" and parent is None:
        return None
    return cbt_audit.audit_disk(
        make_pread(mounted.reader),
        mounted.disk.capacity,
        repo.config.image_chunk_size,
        parent=parent,
        read_extents=plan.extents,
        previous_ranges=mounted.previous_ranges,
        policy=policy,
        seed=seed,
        zeroed_ranges=mounted.previous.zeroed_ranges if mounted.previous else (),
    )


def _base_chunks(previous: RestorePoint | None, plan: ReadPlan) -> Any:
    """The chunk table ``plan.base`` names (None for a ``full`` plan)."""
    if plan.base is None or previous is None or plan.base.disk is None:
        return None
    if plan.base.point is not None and plan.base.point != previous.id:
        raise ValueError(f"plan of disk {plan.disk_key} is based on another point")
    return previous.chunks[plan.base.disk]


@step_def("guest-script")
def guest_script(
    session: Session, vm: VMInfo, creds: Credentials, command: str, timeout: float = 600.0
) -> int:
    """Run a pre-freeze/post-thaw command in the guest (guest operations); returns exit code."""
    program, _, arguments = command.partition(" ")
    result = guestops.run_program(
        session, vm.ref, creds, program, arguments, timeout=timeout, check=True
    )
    return result.exit_code


@step_def("snapshot")
def take_snapshot(
    session: Session, vm: VMInfo, run_id: str, quiesce: bool, policy: str
) -> TakenSnapshot:
    """Snapshot the VM; on a quiesce failure apply ``policy`` (``fail`` or ``crash-consistent``)."""
    if not quiesce:
        handle = snapshots.create_snapshot(session, vm.ref, run_id, quiesce=False)
        return TakenSnapshot(handle, "crash")
    try:
        return TakenSnapshot(
            snapshots.create_snapshot(session, vm.ref, run_id, quiesce=True), "application"
        )
    except QuiesceFailed as exc:
        if policy != "crash-consistent":
            raise
        warning = f"quiescing failed ({exc.get_message()}); took a crash-consistent snapshot"
        log.warning("%s: %s", vm.name, warning)
        handle = snapshots.create_snapshot(session, vm.ref, run_id, quiesce=False)
        return TakenSnapshot(handle, "crash", [warning])


@step_def("mount-disks")
def mount_disks(
    session: Session,
    vm: VMInfo,
    taken: TakenSnapshot | None,
    previous: RestorePoint | None,
    transport: str,
    datastore_mounts: dict[str, str] | None,
    cbt_status: cbt.CbtStatus | None = None,
    scan_every: int = 0,
    mover: str | None = None,
    run_id: str | None = None,
    reread: dict[int, str] | None = None,
    read_whole: str | None = None,
    excluded: Collection[int] = (),
) -> tuple[list[MountedDisk], list[str]]:
    """Plan each snapshot disk (:func:`cbt.plan_disk`: cbt/scan/full, never a silent
    incremental) and open it; ``reread``: disk key → why it is read whole whatever CBT says;
    ``read_whole``: why every disk with a previous backup is (an active full).

    ``taken`` is None for templates: they never run, so their disks are read as they are
    (``full`` the first time, ``scan`` afterwards; CBT needs a snapshot).  ``cbt_status``: what
    :func:`prepare_cbt` found (origin of the tracking, reason when off); ``scan_every``: every
    N-th CBT incremental of a disk is a scan.  ``transport``: ``auto`` (per disk,
    :mod:`vmkeep.vsphere.transport_choice`), ``https``, ``direct`` or ``nfc`` (one export lease
    for all the snapshot's nfc disks; it is released when their readers are closed) or
    ``hotadd`` (each disk attached to the mover VM ``mover`` — name or BIOS UUID — and read as
    its local device, :mod:`vmkeep.vsphere.hotadd`; ``auto`` hot-adds where the mover's host
    mounts the disk's datastore).  ``excluded``: keys of the disks the job leaves out (never
    opened).  On an error every disk opened so far is closed again (hot-added ones detached).
    """
    warnings: list[str] = []
    mounted: list[MountedDisk] = []
    export: list[NfcExport] = []

    def nfc_source(disk: VirtualDisk) -> NfcDiskSource:
        if not export:
            entity = taken.handle.ref if taken is not None else vm.ref
            export.append(NfcExport.open(session, entity, vm.name, snapshot=taken is not None))
        return export[0].source(disk)

    def hotadd_source(disk: VirtualDisk, found: hotadd.Mover) -> hotadd.HotaddReader:
        run = run_id or (taken.handle.run_id if taken is not None else "template")
        return hotadd.open_hotadd(
            session, disk, found, run, vm.instance_uuid, source_vm=vm.name,
            source_datacenter=vm.datacenter,
        )

    try:
        the_mover, no_mover = _mover_for(session, transport, mover)
        return _mount_disks(session, vm, taken, previous, transport, datastore_mounts, cbt_status,
                            scan_every, nfc_source, mounted, warnings,
                            (the_mover, no_mover, hotadd_source), reread or {}, read_whole,
                            set(excluded))
    except BaseException:
        for m in mounted:
            m.reader.close()
        if export:
            export[0].fail()
            export[0].close()
        raise


def _mover_for(
    session: Session, transport: str, mover: str | None
) -> tuple[hotadd.Mover | None, str]:
    """The mover VM for ``hotadd`` (must exist) or ``auto`` (None, with the reason, if not)."""
    if transport == "hotadd":
        return hotadd.find_mover(session, mover), ""
    if transport != "auto":
        return None, ""
    try:
        return hotadd.find_mover(session, mover), ""
    except hotadd.MoverNotFound as exc:
        return None, exc.get_message()


HotaddSource = Callable[[VirtualDisk, hotadd.Mover], hotadd.HotaddReader]


def _hotadd_or(
    transport: str,
    choice: transport_choice.Choice,
    disk: VirtualDisk,
    vm: VMInfo,
    hot: tuple[hotadd.Mover | None, str, HotaddSource],
    warnings: list[str],
) -> tuple[transport_choice.Choice, hotadd.HotaddReader | None]:
    """Hot-add the disk when asked, or under ``auto`` in a mover VM when possible; else
    ``choice`` stays (in a mover VM, its reason says why not hot-add)."""
    mover, no_mover, source = hot
    if transport == "hotadd":
        if mover is None:
            raise hotadd.MoverNotFound(no_mover or "no mover VM")
        return choice, source(disk, mover)
    if transport != "auto" or mover is None:  # not in a mover VM: h13's choice as it is
        return choice, None
    ok, why = hotadd.hotadd_possible(mover, disk, source_vm=vm.name,
                                     source_datacenter=vm.datacenter)
    if not ok:
        why_not = f"{choice.reason} (no hot-add: {why})"
        return transport_choice.Choice(choice.transport, why_not), None
    try:
        return transport_choice.Choice("hotadd", why), source(disk, mover)
    except hotadd.HotaddRefused as exc:
        warnings.append(f"disk {disk.key} ({disk.label}): {exc.get_message()}; "
                        f"read by {choice.transport} instead")
        return transport_choice.Choice(
            choice.transport, f"{choice.reason} (hot-add refused: {exc.get_message()})"
        ), None


def _mount_disks(
    session: Session,
    vm: VMInfo,
    taken: TakenSnapshot | None,
    previous: RestorePoint | None,
    transport: str,
    datastore_mounts: dict[str, str] | None,
    cbt_status: cbt.CbtStatus | None,
    scan_every: int,
    nfc_source: Callable[[VirtualDisk], NfcDiskSource],
    mounted: list[MountedDisk],
    warnings: list[str],
    hot: tuple[hotadd.Mover | None, str, HotaddSource],
    reread: dict[int, str],
    read_whole: str | None,
    excluded: set[int],
) -> tuple[list[MountedDisk], list[str]]:
    prev_disks = {int(d.extra.get("key", -1)): d for d in previous.disks} if previous else {}
    ds_types: dict[int, str] = {}
    if taken is not None:
        source = cbt.snapshot_disks(session, taken.handle.ref)
        ds_types = cbt.datastore_types(session, taken.handle.ref)
    else:
        source = {d.key: d for d in vm.disks}
    # Read from the host running the VM (service ticket, its certificate); vCenter would hand
    # requests to any host, and the files the running host holds open answer 500 there.
    host = hosts.host_endpoint(session, vm.host) if transport in ("https", "auto") else None
    busy = _current_disk_files(session, vm) if vm.power_state == "poweredOn" else []
    for disk in sorted(source.values(), key=lambda d: d.key):
        index = len(mounted)
        if disk.key in excluded:  # the job's choice, recorded in the point: not a warning
            continue
        if not disk.in_snapshots:
            warnings.append(
                f"disk {disk.key} ({disk.label}) {disk.not_in_snapshots}: not in snapshots, "
                "skipped"
            )
            continue
        prev = prev_disks.get(disk.key)
        recorded = DiskCbtState.of_disk(prev) if prev is not None else None
        origin = cbt.origin_of(
            disk.change_id, recorded.origin if recorded else None, cbt_status
        )
        state = None
        if prev is not None and recorded is not None and previous is not None:
            state = cbt.DiskState.recorded(recorded, prev.size, BaseRef(previous.id, prev.index))
        plan = cbt.plan_disk(
            session, vm.ref, taken.handle.ref if taken is not None else None, disk, state,
            vm_cbt_enabled=vm.cbt_enabled, datastore_type=ds_types.get(disk.key), origin=origin,
            scan_every=scan_every, cbt_off_reason=cbt_status.reason if cbt_status else None,
            new_disk=prev is None and previous is not None,
            reread=reread.get(disk.key) or (read_whole if state is not None else None),
        )
        choice = transport_choice.choose(transport, ds_types.get(disk.key),
                                         virtual_rdm=disk.virtual_rdm)
        reader: transports.ExtentReader | NfcDiskSource
        choice, hot_reader = _hotadd_or(transport, choice, disk, vm, hot, warnings)
        if disk.encrypted and hot_reader is None:
            raise EncryptedDiskUnreadable(vm.name, f"{disk.label} ({disk.file_name})",
                                          f"over {choice.transport} ({choice.reason})")
        if hot_reader is not None:
            reader = hot_reader
        elif choice.transport == "nfc":
            reader = nfc_source(disk)
        else:
            try:
                reader = transports.open_disk(
                    session,
                    disk,
                    "direct" if choice.transport == "direct" else "https",
                    datacenter=vm.datacenter,
                    datastore_mounts=datastore_mounts,
                    host=host,
                    warnings=warnings,
                    busy_files=busy,
                )
            except VSphereError as exc:
                fallback = transport_choice.fallback(transport, exc)
                if fallback is None:
                    raise
                warnings.append(f"disk {disk.key} ({disk.label}): {choice.transport} failed "
                                f"({exc.get_message()}); read through NFC instead")
                choice, reader = fallback, nfc_source(disk)
        plan = plan.read_by(Transport(choice.transport, choice.reason))
        mounted.append(MountedDisk(disk, plan, reader, index, vm.cbt_enabled, origin, recorded))
    return mounted, warnings


def _current_disk_files(session: Session, vm: VMInfo) -> list[str]:
    """The files the running VM writes now (after our snapshot: its new deltas)."""
    devices = session.get(vm.ref, "config.hardware.device") or []
    return [
        str(dev.backing.fileName) for dev in devices
        if type(dev).__name__.endswith("VirtualDisk") and getattr(dev.backing, "fileName", None)
    ]


@step_def("back-up-vm-disk")
def back_up_vm_disk(
    repo: Repository,
    mounted: MountedDisk,
    previous: RestorePoint | None,
    progress: Callable[[int], None] | None = None,
    audit: dict[str, Any] | None = None,
    pacer: Pacer | None = None,
) -> DiskResult:
    """Chunk, compress, dedupe and write one snapshot disk (packs and index durable on return).
    Reads are paced by ``VMKEEP_LIMIT_READ`` and by ``pacer`` (storage latency control).

    ``audit``: the disk's CBT-audit record for the restore point (``cbt_audit``; with
    ``"result": "mismatch"`` the disk is marked ``cbt_suspect``).  The disk is read as its plan
    says; storage executes the plan and records its mode and reason unchanged."""
    disk, plan = mounted.disk, mounted.plan
    if isinstance(mounted.reader, NfcDiskSource):  # a stream: tell it what will be read
        mounted.reader.plan_reads(
            list(plan.extents) if plan.extents is not None else None,
            repo.config.image_chunk_size,
        )
    result = backup_disk(
        repo,
        mounted.reader,
        disk.capacity,
        index=mounted.index,
        name=disk.label,
        parent=_base_chunks(previous, plan),
        plan=plan,
        progress=progress,
        read_limit=both(source_reads(), pacer),
        extra={
            "key": disk.key,
            "file_name": disk.file_name,
            "datastore": disk.datastore,
            "thin": disk.thin,
            "controller_key": disk.controller_key,
            "unit_number": disk.unit_number,
            "node": disk.node,
            **cbt_state(mounted, repo.config.image_chunk_size, audit).to_extra(),
            **({"swap": mounted.swap} if mounted.swap is not None else {}),
            **({"deleted": mounted.deleted} if mounted.deleted is not None else {}),
        },
    )
    if isinstance(mounted.reader, NfcDiskSource):
        mounted.reader.finish()  # the rest of the stream, to its end marker, before commit
    return result


def cbt_state(
    mounted: MountedDisk, chunk_size: int, audit: dict[str, Any] | None
) -> DiskCbtState:
    """What the restore point records about this disk's change tracking (docs/format.md)."""
    plan, disk = mounted.plan, mounted.disk
    cbt_mode = plan.mode == "cbt"
    return DiskCbtState(
        change_id=plan.change_id,
        cbt_enabled=mounted.cbt_enabled,
        capacity=disk.capacity,
        file_base=cbt.DiskState.of(disk, True).file_name,
        uuid=disk.uuid,
        mode=plan.mode,
        origin=mounted.origin,
        incrementals=mounted.incrementals + 1 if cbt_mode else 0,
        changed_ranges=tuple(
            (a, b) for a, b in cbt_audit.changed_ranges(plan.extents or (), disk.capacity,
                                                          chunk_size)
        ) if cbt_mode else (),
        changed_bytes=plan.changed_bytes,
        star=plan.star,
        audit=audit,
        suspect=bool(audit and audit.get("result") == "mismatch"),
        transport=plan.transport,
        zeroed_ranges=tuple(
            (a, b) for a, b in zeroed_after(
                plan, disk.capacity, chunk_size,
                mounted.previous.zeroed_ranges if mounted.previous else ())
        ),
    )


@step_def("capture-vm-config")
def capture_vm_config(session: Session, vm: VMInfo) -> dict[str, Any]:
    """The configuration needed to recreate the VM (hardware, disks, networks, .vmx)."""
    try:
        return vmconfig.capture_config(session, vm.ref)
    except VSphereError as exc:
        log.warning("could not capture the full configuration of %s: %s", vm.name, exc)
        return vmconfig.capture_config(session, vm.ref, include_vmx=False)


@step_def("read-vm-tags")
def read_vm_tags(session: Session, vm: VMInfo) -> tuple[list[str], str | None]:
    """The VM's vSphere tags (``CATEGORY:TAG``) for the restore point, and a warning when they
    could not be read (none where there is no tagging service: a standalone ESXi host).
    Read-only."""
    from vmkeep.vsphere import tagging

    try:
        return tagging.tags_of_vm(session, vm.moid), None
    except tagging.NoTaggingService:
        return [], None
    except VSphereError as exc:
        return [], f"vSphere tags not recorded: {exc.get_message()}"


@step_def("release-snapshot", RetryPolicy(retries=3, delay_s=10.0))
def release_snapshot(session: Session, vm: VMInfo, taken: TakenSnapshot) -> bool:
    """Remove the run's snapshot (consolidating if needed); True when it is gone."""
    snapshots.remove_snapshot(session, vm.ref, taken.handle.ref, taken.handle.name)
    return True
