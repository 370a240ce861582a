"""Changed-block tracking: enable it, read change ids, query changed areas, decide the read mode.

The rule is **never a silent incremental**.  :func:`cbt_plan` (pure) returns ``"cbt"`` only when
everything lines up with the previous restore point; otherwise ``"scan"`` (read everything and
compare with the previous image) or ``"full"`` (no previous image), always with a reason that the
restore point records.  A ``FileFault`` (or any fault) from ``QueryChangedDiskAreas`` is a
:class:`ChangeTrackingError`; :func:`plan_disk` turns it into ``"scan"``.

Change ids look like ``"52 de 8a … 2d-7f 01 … 3c/42"``: a tracking epoch (uuid) and a sequence
number.  A different uuid means tracking was reset (re-enabled, storage vMotion, resize).

Calls: ``QueryChangedDiskAreas`` is read-only, idempotent and retried on drops.  ``enable_cbt``
is idempotent (does nothing when already on); its stun snapshot is a regular vmkeep snapshot
(name ``vmkeep-cbt-…``) so the sweep cleans it up if the process dies in between.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from vmkeep import clock
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import ChangeTrackingError, VSphereError, fault_name
from vmkeep.vsphere.inventory import DiskInfo, disks_from_devices
from vmkeep.vsphere.snapshots import backup_snapshot
from vmkeep.vsphere.waiter import wait_for_task

Mode = Literal["cbt", "scan", "full"]
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
class DiskState:
    """What a restore point remembers about a disk, to judge the next incremental."""

    change_id: str | None
    capacity: int
    file_name: str
    cbt_enabled: bool
    uuid: str | None = None

    @classmethod
    def of(cls, disk: DiskInfo, cbt_enabled: bool) -> DiskState:
        name = _base_name(disk.file_name)
        return cls(disk.change_id, disk.capacity, name, cbt_enabled, disk.uuid)


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


def snapshot_disks(session: Session, snapshot: Any) -> dict[int, DiskInfo]:
    """The snapshot's disks (frozen backing, its ``changeId``) by device key."""
    devices = session.get(snapshot, "config.hardware.device") or []
    return {d.key: d for d in disks_from_devices(devices, {})}


def cbt_enabled(session: Session, vm: Any) -> bool:
    return bool(session.get(vm, "config.changeTrackingEnabled"))


def enable_cbt(session: Session, vm: Any, *, timeout: float = 1800.0) -> bool:
    """Turn CBT on and stun the VM once (snapshot create+remove); False if it was already on."""
    from pyVmomi import vim

    if cbt_enabled(session, vm):
        return False
    spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
    task = session.call(vm.ReconfigVM_Task, spec, what="enable CBT")
    wait_for_task(session, task, timeout=timeout, what="enable CBT")
    stamp = clock.now().strftime("%Y%m%dT%H%M%S")
    with backup_snapshot(session, vm, f"cbt-{stamp}", quiesce=False, timeout=timeout):
        pass
    return True


@dataclass(frozen=True)
class DiskPlan:
    mode: Mode
    reason: str
    areas: list[tuple[int, int]] | None  # None: read the whole disk


def plan_disk(
    session: Session,
    vm: Any,
    snapshot: Any,
    disk: DiskInfo,
    prev: DiskState | None,
    *,
    vm_cbt_enabled: bool,
) -> DiskPlan:
    """Plan + areas for one snapshot disk: CBT areas, or allocated areas for a full read of a
    thin disk, falling back to ``scan``/whole-disk reads on any CBT failure (with the reason)."""
    mode, reason = cbt_plan(prev, DiskState.of(disk, vm_cbt_enabled))
    if mode == "cbt":
        assert prev is not None and prev.change_id is not None
        try:
            areas = query_changed_areas(
                session, vm, snapshot, disk.key, prev.change_id, disk.capacity
            )
        except ChangeTrackingError as exc:
            return DiskPlan("scan", f"CBT query failed: {exc.get_message()}", None)
        return DiskPlan("cbt", reason, areas)
    if vm_cbt_enabled and disk.thin:
        try:
            areas = query_changed_areas(session, vm, snapshot, disk.key, "*", disk.capacity)
            return DiskPlan(mode, reason + "; allocated areas only", areas)
        except ChangeTrackingError:
            pass
    return DiskPlan(mode, reason, None)
