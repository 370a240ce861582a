"""Changed-block tracking: enable it, read change ids, query changed areas, decide the read plan.

The rule is **never a silent incremental**.  :func:`cbt_plan` (pure) returns ``"cbt"`` only when
everything lines up with the previous restore point; otherwise ``"scan"`` (read everything and
compare with the previous image) or ``"full"`` (no previous image), always with a reason that the
restore point records.  A ``FileFault`` (or any fault) from ``QueryChangedDiskAreas`` is a
:class:`ChangeTrackingError`; :func:`plan_disk` turns it into ``"scan"``.

:func:`plan_disk` is the **only** place a VM disk's read is decided: it returns a typed
:class:`~vmkeep.storage.read_plan.ReadPlan` (mode and reason, extents, base point and disk,
change id to record, ``"*"`` rule, what the audit compares with) covering templates, new disks,
periodic scans and whole-disk re-reads after an audit mismatch.  The code that opens the disk
adds the transport it used; ``storage.disk_backup`` executes the plan and never changes its
mode.  The previous point's CBT state arrives typed (:class:`DiskState.recorded` from
:class:`~vmkeep.storage.read_plan.DiskCbtState`).

Change ids look like ``"52 de 8a … 2d-7f 01 … 3c/42"``: a tracking epoch (uuid) and a sequence
number.  A different uuid means tracking was reset (re-enabled, storage vMotion, resize).

Calls: ``QueryChangedDiskAreas`` is read-only, idempotent and retried on drops.  ``enable_cbt``
is idempotent (does nothing when already on); its stun snapshot is a regular vmkeep snapshot
(name ``vmkeep-cbt-…``) so the sweep cleans it up if the process dies in between.

VMware's rules, applied here (VDDK programming guide, "Changed Block Tracking"; KB 1020128):

* CBT needs virtual hardware ≥ 7 and ``capability.changeTrackingSupported``
  (:func:`cbt_support`); an unsupported VM is read by ``scan``, with the reason recorded.
* Enabling (``ReconfigVM changeTrackingEnabled``) takes effect at the next stun, so
  :func:`ensure_cbt` follows it with a snapshot create/remove.
* ``changeId="*"`` (allocated areas) is valid only on VMFS and only if the VM had no snapshots
  when CBT was enabled.  :class:`CbtOrigin` records, per disk and tracking epoch, who enabled CBT
  and whether snapshots existed then; :func:`star_rule` decides ``trust`` (enabled by vmkeep
  without snapshots, on VMFS), ``verify`` (enabled by someone else, on VMFS: the caller audits
  the unread areas) or ``no`` (read the whole disk).
* Periodic scans: every ``scan_every``-th CBT incremental of a disk is a ``scan`` (VMware shipped
  CBT bugs; a scan heals whatever a wrong answer missed), and so is the first backup after a
  reset (a new epoch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vmkeep import clock
from vmkeep.storage.read_plan import (
    AuditBasis,
    BaseRef,
    CbtOrigin,
    DiskCbtState,
    Mode,
    ReadPlan,
    StarRule,
)
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import ChangeTrackingError, VSphereError, fault_name
from vmkeep.vsphere.inventory import VirtualDisk, disks_from_devices
from vmkeep.vsphere.snapshots import backup_snapshot
from vmkeep.vsphere.waiter import wait_for_task

__all__ = ["BaseRef", "CbtOrigin", "Mode", "ReadPlan", "StarRule"]  # re-exported
_CHANGE_ID = re.compile(
    r"^(?P<epoch>[0-9A-Fa-f]{2}(?: ?[0-9A-Fa-f]{2})*-[0-9A-Fa-f ]+)/(?P<seq>\d+)$"
)


def parse_change_id(change_id: str | None) -> tuple[str, int] | None:
    """``(epoch, sequence)`` or ``None`` when missing or malformed (``"*"`` is not a change id)."""
    m = _CHANGE_ID.match((change_id or "").strip())
    if not m:
        return None
    return m.group("epoch"), int(m.group("seq"))


@dataclass(frozen=True)
class CbtStatus:
    """A VM's CBT after :func:`ensure_cbt`: on or not (and why), and whether vmkeep just
    enabled it (with or without snapshots present)."""

    enabled: bool
    supported: bool
    reason: str
    enabled_now: bool = False
    snapshots_at_enable: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DiskState:
    """What a restore point remembers about a disk, to judge the next incremental."""

    change_id: str | None
    capacity: int
    file_name: str
    cbt_enabled: bool
    uuid: str | None = None
    incrementals: int = 0  # consecutive CBT incrementals since the last full read
    origin: CbtOrigin | None = None
    base: BaseRef | None = None  # the point and disk this state was recorded in

    @classmethod
    def of(cls, disk: VirtualDisk, cbt_enabled: bool) -> DiskState:
        name = _base_name(disk.file_name)
        return cls(disk.change_id, disk.capacity, name, cbt_enabled, disk.uuid)

    @classmethod
    def recorded(cls, state: DiskCbtState, size: int, base: BaseRef) -> DiskState:
        """The previous point's typed record as the planner's input; ``size``: the size of the
        disk's chunk table there (what a ``cbt`` read takes unchanged chunks from)."""
        return cls(state.change_id, size, state.file_base, state.cbt_enabled, state.uuid,
                   state.incrementals, state.origin, base)


def _base_name(file_name: str) -> str:
    """``[ds] vm/disk-000002.vmdk`` → ``[ds] vm/disk.vmdk``: snapshot deltas don't move a disk."""
    return re.sub(r"-\d{6}\.vmdk$", ".vmdk", file_name)


def cbt_plan(prev: DiskState | None, current: DiskState) -> tuple[Mode, str]:
    """Decide how to read ``current`` given the previous restore point's ``prev`` (pure)."""
    if prev is None:
        return "full", "first backup of this disk"
    if not current.cbt_enabled:
        return "scan", "changed-block tracking is disabled on the VM"
    if not prev.cbt_enabled:
        return "scan", "changed-block tracking was off at the previous backup"
    if current.capacity != prev.capacity:
        return "scan", f"disk resized from {prev.capacity} to {current.capacity} bytes"
    if _base_name(current.file_name) != _base_name(prev.file_name):
        return "scan", f"disk moved from {prev.file_name} to {current.file_name}"
    if prev.uuid and current.uuid and prev.uuid != current.uuid:
        return "scan", "disk was replaced (backing uuid changed)"
    old, new = parse_change_id(prev.change_id), parse_change_id(current.change_id)
    if old is None:
        return "scan", f"previous change id {prev.change_id!r} missing or malformed"
    if new is None:
        return "scan", f"current change id {current.change_id!r} missing or malformed"
    if old[0] != new[0]:
        return "scan", "change tracking was reset since the previous backup"
    if new[1] < old[1]:
        return "scan", "change id went backwards"
    return "cbt", f"changes since {prev.change_id}"


def origin_of(
    change_id: str | None, previous: CbtOrigin | None, status: CbtStatus | None
) -> CbtOrigin:
    """The disk's :class:`CbtOrigin` now: vmkeep's when it enabled CBT in this run, the
    previous point's while the tracking epoch is the same, else ``other``."""
    parsed = parse_change_id(change_id)
    epoch = parsed[0] if parsed else None
    if status is not None and status.enabled_now:
        return CbtOrigin("vmkeep", status.snapshots_at_enable, epoch)
    if previous is not None and epoch is not None and previous.epoch == epoch:
        return previous
    return CbtOrigin("other", None, epoch)


def star_rule(datastore_type: str | None, origin: CbtOrigin | None) -> tuple[StarRule, str]:
    """May ``changeId="*"`` (allocated areas) be used for a full read?  (pure; KB 1020128)"""
    kind = (datastore_type or "unknown").upper()
    if not kind.startswith("VMFS"):
        return "no", f'changeId "*" is only valid on VMFS (datastore type {kind})'
    if origin is None or origin.by != "vmkeep":
        return "verify", 'CBT enabled outside vmkeep: "*" trusted on VMFS, verified by the audit'
    if origin.snapshots_at_enable is not False:
        return "no", 'the VM had snapshots when CBT was enabled: "*" is not valid'
    return "trust", "allocated areas (VMFS, CBT enabled by vmkeep without snapshots)"


def periodic_scan_due(prev: DiskState | None, scan_every: int) -> bool:
    """Is this disk's next CBT incremental the ``scan_every``-th one (0: never)?"""
    return bool(scan_every) and prev is not None and prev.incrementals + 1 >= scan_every


def _merge(areas: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for off, length in sorted(areas):
        if merged and off <= merged[-1][0] + merged[-1][1]:
            last_off, last_len = merged[-1]
            merged[-1] = (last_off, max(last_len, off + length - last_off))
        else:
            merged.append((off, length))
    return merged


def query_changed_areas(
    session: Session, vm: Any, snapshot: Any, disk_key: int, change_id: str, capacity: int
) -> list[tuple[int, int]]:
    """All ``(offset, length)`` areas changed since ``change_id`` (``"*"``: allocated areas).

    Pages by ``startOffset`` until ``capacity``.  Areas are checked (inside the disk, progress
    made) and merged; any fault or inconsistency raises :class:`ChangeTrackingError`.
    """
    areas: list[tuple[int, int]] = []
    start = 0
    while start < capacity:
        try:
            info = session.call(
                vm.QueryChangedDiskAreas, snapshot, disk_key, start, change_id,
                idempotent=True, what="QueryChangedDiskAreas",
            )
        except VSphereError as exc:
            raise ChangeTrackingError(disk_key, exc.get_message()) from None
        except Exception as exc:  # pragma: no cover - session.call translates everything
            raise ChangeTrackingError(disk_key, fault_name(exc)) from None
        for area in info.changedArea or []:
            off, length = int(area.start), int(area.length)
            if off < 0 or length <= 0 or off + length > capacity:
                raise ChangeTrackingError(disk_key, f"area {off}+{length} outside the disk")
            areas.append((off, length))
        end = int(info.startOffset) + int(info.length)
        if end <= start:
            raise ChangeTrackingError(disk_key, f"no progress at offset {start}")
        start = end
    return _merge(areas)


def snapshot_disks(session: Session, snapshot: Any) -> dict[int, VirtualDisk]:
    """The snapshot's disks (frozen backing, its ``changeId``) by device key."""
    devices = session.get(snapshot, "config.hardware.device") or []
    return {d.key: d for d in disks_from_devices(devices, {})}


def cbt_enabled(session: Session, vm: Any) -> bool:
    return bool(session.get(vm, "config.changeTrackingEnabled"))


def hardware_version(version: str | None) -> int | None:
    """``"vmx-04"`` → 4; None when missing or malformed."""
    m = re.fullmatch(r"vmx-(\d+)", (version or "").strip())
    return int(m.group(1)) if m else None


def cbt_support(session: Session, vm: Any) -> tuple[bool, str]:
    """Can CBT be used on this VM (hardware ≥ 7 and ``capability.changeTrackingSupported``)?"""
    props = session.props(vm, ["config.version", "capability.changeTrackingSupported"])
    version = props.get("config.version")
    hw = hardware_version(version)
    if hw is not None and hw < 7:
        return False, f"CBT needs virtual hardware 7 or later (this VM has {version})"
    if props.get("capability.changeTrackingSupported") is False:
        return False, "the VM reports capability.changeTrackingSupported = false"
    return True, "supported"


def ensure_cbt(session: Session, vm: Any, *, enable: bool, timeout: float = 1800.0) -> CbtStatus:
    """CBT on (enabling it with its stun cycle when ``enable``) or the reason why not.

    Never raises for an unsupported VM: the backup then reads by ``scan``.
    """
    if cbt_enabled(session, vm):
        return CbtStatus(True, True, "already enabled")
    supported, why = cbt_support(session, vm)
    if not supported:
        return CbtStatus(False, False, why)
    if not enable:
        return CbtStatus(False, True, "CBT is off and --no-enable-cbt was given")
    snapshots_present = bool(session.get(vm, "snapshot"))
    try:
        _set_cbt(session, vm, True, timeout)
    except VSphereError as exc:
        if exc.is_transient:
            raise
        # a refusal the capability check did not foresee: back up by scan, say why
        return CbtStatus(False, False, f"enabling CBT failed: {exc.get_message()}")
    _stun(session, vm, "cbt", timeout)  # a failing snapshot fails the backup, as its own would
    return CbtStatus(True, True, "enabled by vmkeep", True, snapshots_present)


def reset_cbt(session: Session, vm: Any, *, timeout: float = 1800.0) -> CbtStatus:
    """Reset change tracking after a wrong answer: off, stun, on, stun (a new epoch)."""
    _set_cbt(session, vm, False, timeout)
    _stun(session, vm, "cbt-off", timeout)
    snapshots_present = bool(session.get(vm, "snapshot"))
    _set_cbt(session, vm, True, timeout)
    _stun(session, vm, "cbt", timeout)
    return CbtStatus(True, True, "reset by vmkeep", True, snapshots_present)


def enable_cbt(session: Session, vm: Any, *, timeout: float = 1800.0) -> bool:
    """Turn CBT on and stun the VM once (snapshot create+remove); False if it was already on."""
    if cbt_enabled(session, vm):
        return False
    _set_cbt(session, vm, True, timeout)
    _stun(session, vm, "cbt", timeout)
    return True


def _set_cbt(session: Session, vm: Any, on: bool, timeout: float) -> None:
    from pyVmomi import vim

    what = "enable CBT" if on else "disable CBT"
    spec = vim.vm.ConfigSpec(changeTrackingEnabled=on)
    task = session.call(vm.ReconfigVM_Task, spec, what=what)
    wait_for_task(session, task, timeout=timeout, what=what)


def _stun(session: Session, vm: Any, label: str, timeout: float) -> None:
    """A snapshot create+remove: CBT changes take effect at a stun.  A regular vmkeep snapshot
    (``vmkeep-<label>-…``), so the sweep removes it if the process dies in between."""
    stamp = clock.now().strftime("%Y%m%dT%H%M%S")
    with backup_snapshot(session, vm, f"{label}-{stamp}", quiesce=False, timeout=timeout):
        pass


def plan_disk(
    session: Session,
    vm: Any,
    snapshot: Any | None,
    disk: VirtualDisk,
    prev: DiskState | None,
    *,
    vm_cbt_enabled: bool,
    datastore_type: str | None = "VMFS",
    origin: CbtOrigin | None = None,
    scan_every: int = 0,
    cbt_off_reason: str | None = None,
    new_disk: bool = False,
    reread: str | None = None,
) -> ReadPlan:
    """**The** read plan of one disk (the only place a VM disk's mode is decided): CBT areas,
    or allocated areas for a full read of a thin disk where ``"*"`` is valid (:func:`star_rule`),
    falling back to ``scan``/whole-disk reads on any CBT failure (with the reason).

    ``snapshot`` None: a template, read without a snapshot (``full``, then ``scan``).
    ``prev``: the previous point's record of this disk (its ``base`` names that point and disk);
    ``new_disk``: the previous point exists but lacks this disk; ``reread``: why this disk must
    be read whole whatever CBT says (an audit mismatch); ``scan_every``: see
    :func:`periodic_scan_due`.  ``transport`` is left to whoever opens the disk.
    """
    base = (prev.base or BaseRef(None, None)) if prev is not None else None
    plan = _plan(session, vm, snapshot, disk, prev, base, vm_cbt_enabled, datastore_type,
                 origin, scan_every, cbt_off_reason, new_disk)
    if reread is not None:
        plan = ReadPlan(disk.key, "full" if base is None else "scan", reread, base=base,
                        change_id=disk.change_id)
    return plan


def _plan(
    session: Session,
    vm: Any,
    snapshot: Any | None,
    disk: VirtualDisk,
    prev: DiskState | None,
    base: BaseRef | None,
    vm_cbt_enabled: bool,
    datastore_type: str | None,
    origin: CbtOrigin | None,
    scan_every: int,
    cbt_off_reason: str | None,
    new_disk: bool,
) -> ReadPlan:
    def plan(mode: Mode, reason: str, extents: list[tuple[int, int]] | None = None,
             star: StarRule | None = None, audit: AuditBasis | None = None) -> ReadPlan:
        return ReadPlan(disk.key, mode, reason, None if extents is None else tuple(extents),
                        None if mode == "full" else base, disk.change_id, star, audit)

    if snapshot is None:  # templates never run; CBT needs a snapshot
        return plan("full" if prev is None else "scan", "template: read without a snapshot")
    mode, reason = cbt_plan(prev, DiskState.of(disk, vm_cbt_enabled))
    if new_disk and mode == "full":
        reason = "new disk since the previous restore point"
    if mode == "scan" and not vm_cbt_enabled and cbt_off_reason:
        reason = f"changed-block tracking unavailable: {cbt_off_reason}"
    if mode == "cbt" and periodic_scan_due(prev, scan_every):
        assert prev is not None
        return plan("scan", f"periodic scan after {prev.incrementals} CBT incrementals "
                    f"(every {scan_every})")
    if mode == "cbt":
        assert prev is not None and prev.change_id is not None
        try:
            areas = query_changed_areas(
                session, vm, snapshot, disk.key, prev.change_id, disk.capacity
            )
        except ChangeTrackingError as exc:
            return plan("scan", f"CBT query failed: {exc.get_message()}")
        return plan("cbt", reason, areas, audit="previous point")
    if mode == "full" and vm_cbt_enabled and disk.thin:
        rule, why = star_rule(datastore_type, origin)
        if rule == "no":
            return plan(mode, f"{reason}; whole disk read ({why})", None, "no")
        try:
            areas = query_changed_areas(session, vm, snapshot, disk.key, "*", disk.capacity)
        except ChangeTrackingError as exc:
            return plan(mode, f'{reason}; "*" failed ({exc.get_message()})', None, "no")
        audit: AuditBasis | None = "zeros" if rule == "verify" else None
        return plan(mode, f"{reason}; {why}", areas, rule, audit)
    return plan(mode, reason)


def datastore_types(session: Session, snapshot_or_vm: Any) -> dict[int, str]:
    """Each disk's datastore type (``VMFS``, ``NFS``, ``vsan``, ``VVOL``…) by device key; one
    property read per datastore."""
    from pyVmomi import vim

    devices = session.get(snapshot_or_vm, "config.hardware.device") or []
    types: dict[str, str] = {}
    out: dict[int, str] = {}
    for dev in devices:
        if not isinstance(dev, vim.vm.device.VirtualDisk):
            continue
        ref = getattr(dev.backing, "datastore", None)
        if ref is None:
            continue
        if ref._moId not in types:
            types[ref._moId] = str(session.get(ref, "summary.type") or "unknown")
        out[dev.key] = types[ref._moId]
    return out
