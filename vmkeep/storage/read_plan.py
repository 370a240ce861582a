"""How one disk is read (:class:`ReadPlan`), and what a restore point remembers about its change
tracking (:class:`DiskCbtState`) — both typed, both decided above this layer.

The read mode of a disk is decided **once**, by the planner that has the knowledge: for VM disks
``vmkeep.vsphere.cbt.plan_disk`` (VMware's CBT rules, the previous point's state, the audit),
for disk images :func:`image_plan`.  :func:`vmkeep.storage.disk_backup.backup_disk` executes the
plan and never changes its mode; a plan that contradicts itself (a ``cbt`` plan without a base,
a ``full`` plan with one) is refused when it is built (:class:`ValueError`: a programming error,
never user input).

Modes (what the data path does, see ``disk_backup``):

``full``  no base: the ``extents`` (allocated areas, ``changeId="*"``) or the whole disk are
          read; unread chunks are zeros.
``scan``  every chunk read; chunks whose xxh3 matches the base's at the same offset are reused.
``cbt``   only chunks touching ``extents`` (CBT's changed areas) are read; every other chunk is
          the base's.

:class:`DiskCbtState` is the typed view of a VM disk's CBT keys in a restore point
(``docs/format.md``, "Version 2: changed-block tracking"): it writes exactly those keys
(:meth:`DiskCbtState.to_extra`) and reads them back (:meth:`DiskCbtState.from_extra`) from
version-1 points (no CBT keys: an unknown state, so the next backup scans) and version-2 points
alike; a value of the wrong type reads as absent, never as a trusted change id.  No vSphere and
no Prefect here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from vmkeep.storage.manifest import DiskInfo

Mode = Literal["full", "scan", "cbt"]
StarRule = Literal["trust", "verify", "no"]
#: what a CBT audit compares the chunks it samples with (None: no audit for this plan)
AuditBasis = Literal["previous point", "zeros"]
Extent = tuple[int, int]
MODES: tuple[Mode, ...] = ("full", "scan", "cbt")


@dataclass(frozen=True)
class BaseRef:
    """The restore point (``point`` id) and its disk number ``disk`` that supply every chunk a
    ``scan``/``cbt`` plan does not read; None where the caller holds only the chunk table."""

    point: str | None
    disk: int | None


@dataclass(frozen=True)
class Transport:
    """How a disk's bytes were fetched, and why (the point's per-disk ``transport`` record)."""

    name: str  # https | direct | nfc | hotadd | file
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "name": self.name, "reason": self.reason}

    @classmethod
    def from_json(cls, obj: Any) -> Transport | None:
        if not isinstance(obj, Mapping) or obj.get("version") != 1:
            return None  # readers ignore record versions they do not know
        name, reason = obj.get("name"), obj.get("reason")
        return cls(name, reason) if isinstance(name, str) and isinstance(reason, str) else None


@dataclass(frozen=True)
class ReadPlan:
    """One disk's read, decided before any byte is read (see the module docstring).

    ``extents``: ``(offset, length)`` areas to read (None: the whole disk); ``base``: the
    previous point's disk for unchanged/unread data (``scan`` and ``cbt`` only);
    ``change_id``: the change id this backup records for the disk (the snapshot disk's);
    ``star``: for a ``full`` read of a thin disk, how far CBT's ``changeId="*"`` was trusted;
    ``audit``: what the CBT truth audit compares with (None: not audited); ``transport``: how
    the bytes are fetched (filled in by whoever opens the disk — an opening may fall back, the
    mode never changes); ``zeroed``: ``(offset, length)`` areas whose whole chunks are recorded
    as zeros instead of read, wherever the mode reads (the guest's swap, :meth:`without`).
    """

    disk_key: int
    mode: Mode
    reason: str
    extents: tuple[Extent, ...] | None = None
    base: BaseRef | None = None
    change_id: str | None = None
    star: StarRule | None = None
    audit: AuditBasis | None = None
    transport: Transport | None = None
    zeroed: tuple[Extent, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown read mode {self.mode!r}")
        if self.extents is not None:
            object.__setattr__(self, "extents", tuple((int(o), int(n)) for o, n in self.extents))
        object.__setattr__(self, "zeroed", tuple((int(o), int(n)) for o, n in self.zeroed))
        if self.mode == "full" and self.base is not None:
            raise ValueError("a full read has no base")
        if self.mode in ("scan", "cbt") and self.base is None:
            raise ValueError(f"a {self.mode} read needs a base point")
        if self.mode == "cbt" and self.extents is None:
            raise ValueError("a cbt read needs its changed extents")
        if self.mode == "scan" and self.extents is not None:
            raise ValueError("a scan reads the whole disk")

    @property
    def changed_bytes(self) -> int | None:
        """Bytes CBT reported changed (``cbt`` plans), else None."""
        return sum(n for _, n in self.extents or ()) if self.mode == "cbt" else None

    def read_by(self, transport: Transport) -> ReadPlan:
        """This plan, fetched by ``transport`` (the mode and extents stay)."""
        return replace(self, transport=transport)

    def without(self, zeroed: Sequence[Extent]) -> ReadPlan:
        """This plan, recording ``zeroed`` areas as zeros instead of reading them (the mode and
        extents stay)."""
        return replace(self, zeroed=tuple(zeroed))


def image_plan(
    size: int,
    base: Any | None,
    *,
    changed: Sequence[Extent] | None = None,
    allocated: Sequence[Extent] | None = None,
    reason: str = "",
    disk_key: int = 0,
    base_ref: BaseRef | None = None,
) -> ReadPlan:
    """The planner for disk images (no CBT knowledge): ``base`` is the previous point's chunk
    table (anything with ``size``) or None; ``changed`` a caller's change list."""
    if base is None:
        return ReadPlan(disk_key, "full", reason or "no previous restore point",
                        None if allocated is None else tuple(allocated))
    ref = base_ref or BaseRef(None, disk_key)
    if base.size != size:
        return ReadPlan(disk_key, "scan", reason or "disk size changed since the previous point",
                        base=ref)
    if changed is not None:
        return ReadPlan(disk_key, "cbt", reason or "changed-block list", tuple(changed), ref)
    return ReadPlan(disk_key, "scan", reason or "no change list: xxh3 comparison", base=ref)


@dataclass(frozen=True)
class CbtOrigin:
    """Who enabled a disk's change tracking (epoch ``epoch``) and whether the VM had snapshots
    then; ``by`` is ``vmkeep`` or ``other`` (enabled outside vmkeep, or not known)."""

    by: Literal["vmkeep", "other"]
    snapshots_at_enable: bool | None
    epoch: str | None

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, "snapshots_at_enable": self.snapshots_at_enable, "epoch": self.epoch}

    @classmethod
    def from_json(cls, obj: Any) -> CbtOrigin | None:
        if not isinstance(obj, Mapping) or obj.get("by") not in ("vmkeep", "other"):
            return None
        snaps = obj.get("snapshots_at_enable")
        epoch = obj.get("epoch")
        return cls(obj["by"], None if snaps is None else bool(snaps),
                   epoch if isinstance(epoch, str) else None)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _ranges(value: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for item in value:
        if (isinstance(item, (list, tuple)) and len(item) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
            out.append((int(item[0]), int(item[1])))
    return tuple(out)


@dataclass(frozen=True)
class DiskCbtState:
    """A VM disk's change-tracking state as a restore point records it (typed).

    ``change_id``: the snapshot disk's change id (None when CBT was off or unknown);
    ``cbt_enabled``: CBT was on for the VM; ``capacity``/``file_base``/``uuid``: what identifies
    the disk to the next run's checks; ``mode``: how it was read; ``origin``: who enabled the
    tracking epoch; ``incrementals``: consecutive ``cbt`` reads so far; ``changed_ranges``:
    chunk ranges this read took from CBT (the next audit samples their neighbours);
    ``zeroed_ranges``: chunk ranges recorded as zeros that the disk may hold otherwise (swap
    left out by this read or an earlier one and not read since; the next audit does not sample
    them); ``changed_bytes``, ``star``: see :class:`ReadPlan`; ``audit``: the CBT audit record
    (``result`` = ok | mismatch | off | not applicable, and its details); ``suspect``: CBT was
    caught wrong for this disk; ``transport``: how it was fetched.
    """

    change_id: str | None
    cbt_enabled: bool
    capacity: int
    file_base: str = ""
    uuid: str | None = None
    mode: Mode | None = None
    origin: CbtOrigin | None = None
    incrementals: int = 0
    changed_ranges: tuple[tuple[int, int], ...] = ()
    changed_bytes: int | None = None
    star: StarRule | None = None
    audit: Mapping[str, Any] | None = field(default=None, compare=False)
    suspect: bool = False
    transport: Transport | None = None
    zeroed_ranges: tuple[tuple[int, int], ...] = ()

    @property
    def audit_result(self) -> str | None:
        """``ok``, ``mismatch``, ``off``, ``not applicable`` or None (not recorded)."""
        return _str((self.audit or {}).get("result"))

    def to_extra(self) -> dict[str, Any]:
        """The point's per-disk keys (docs/format.md): flat identity keys, ``cbt``,
        ``cbt_audit``, ``cbt_suspect``, ``transport``."""
        return {
            "capacity": self.capacity,
            "file_base": self.file_base,
            "change_id": self.change_id,
            "cbt_enabled": self.cbt_enabled,
            "uuid": self.uuid,
            "cbt": {
                "origin": self.origin.to_json() if self.origin else None,
                "incrementals": self.incrementals,
                "changed_ranges": [list(r) for r in self.changed_ranges],
                "changed_bytes": self.changed_bytes,
                "star": self.star,
                "zeroed_ranges": [list(r) for r in self.zeroed_ranges],
            },
            "cbt_audit": dict(self.audit) if self.audit is not None else None,
            "cbt_suspect": self.suspect,
            "transport": self.transport.to_json() if self.transport else None,
        }

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], size: int, mode: str | None = None
                   ) -> DiskCbtState:
        """Read a point's disk keys back (``size``: the disk's size in the point).  Version-1
        points lack ``cbt``/``cbt_audit``/``cbt_suspect``; wrong types read as absent."""
        record = extra.get("cbt")
        record = record if isinstance(record, Mapping) else {}
        star = record.get("star")
        audit = extra.get("cbt_audit")
        changed = record.get("changed_bytes")
        return cls(
            change_id=_str(extra.get("change_id")),
            cbt_enabled=extra.get("cbt_enabled") is True,
            capacity=_int(extra.get("capacity"), size),
            file_base=_str(extra.get("file_base")) or "",
            uuid=_str(extra.get("uuid")),
            mode=next((m for m in MODES if m == mode), None),
            origin=CbtOrigin.from_json(record.get("origin")),
            incrementals=max(0, _int(record.get("incrementals"), 0)),
            changed_ranges=_ranges(record.get("changed_ranges")),
            changed_bytes=changed if isinstance(changed, int) and changed is not True
            and changed is not False else None,
            star=star if star in ("trust", "verify", "no") else None,
            audit=dict(audit) if isinstance(audit, Mapping) else None,
            suspect=extra.get("cbt_suspect") is True,
            transport=Transport.from_json(extra.get("transport")),
            zeroed_ranges=_ranges(record.get("zeroed_ranges")),
        )

    @classmethod
    def of_disk(cls, disk: DiskInfo) -> DiskCbtState:
        """The state recorded for ``disk`` in a restore point."""
        return cls.from_extra(disk.extra, disk.size, disk.mode)
