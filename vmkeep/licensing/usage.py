"""Counting what is protected: the catalog interface and the usage of a planned run.

The repository provides the *catalog*: an iterable of :class:`ProtectedItem`, one per restore point
(or per protected machine, newest first — duplicates are harmless).  :func:`usage_from_items`
counts the distinct hosts, guests, clients, remote devices and tape slots among the items inside
the retention window; :func:`run_usage` describes what one backup run is about to add.  Both
return a :class:`vmkeep.licensing.model.Usage`, so the licence check can unite them.

Identities (shared with the planner; see :mod:`vmkeep.licensing.identity`): an item's
``workload`` is the identity of what it protects, derived from the source (instanceUuid, URL host,
the machine storing a file tree or disk image), never from a free-text name.  Items without one
(restore points written before identities were recorded) fall back to the instance UUID, else
the machine name.  Hosts, remote devices and tape libraries are identified by name
(case-insensitive).  A file client that is also an image-protected ESX host is recognised because
both are ``name:<host>``.

Every backup is counted within :data:`USAGE_WINDOW` (90 days) of its last run, wherever it went:
the licence check unites the installation's ledger (:mod:`vmkeep.licensing.ledger`) with the
catalog of the repository written to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from vmkeep.licensing.identity import machine_id, vm_id
from vmkeep.licensing.model import Usage

ItemKind = Literal["vm", "files", "image"]
KINDS = ("vm", "files", "image")

#: a workload counts for this long after its last backup (the licence's retention window)
USAGE_WINDOW = timedelta(days=90)

__all__ = [
    "KINDS",
    "USAGE_WINDOW",
    "ItemKind",
    "PlannedVm",
    "ProtectedItem",
    "machine_id",
    "run_usage",
    "usage_from_items",
    "vm_id",
]


@dataclass(frozen=True)
class ProtectedItem:
    """Something the repository protected, at ``time``.

    * ``kind="vm"``: an image backup of VM ``machine`` read through ESX host ``host``.
    * ``kind="files"``: a file-level backup of client ``machine`` (a guest, a physical machine, or
      an ESX host itself); ``host`` is unused; ``vm_uuid`` when the client is a guest whose
      instance UUID is known.  Counts one backup client.
    * ``kind="image"``: a ``backup image`` of a disk image file (``machine`` is its display
      name); counts one guest seat, on no ESX host.
    * ``workload``: the identity of what was protected (:mod:`vmkeep.licensing.identity`); when
      absent it is derived from ``vm_uuid`` / ``machine`` (older restore points).
    * ``remote_device``: the LAN-free data mover (SRD) that moved the data, if any.
    * ``tape_library`` / ``tape_slots``: the tape library written to and its slot count, if any.
    """

    kind: ItemKind
    machine: str
    time: datetime
    host: str | None = None
    vm_uuid: str | None = None
    remote_device: str | None = None
    tape_library: str | None = None
    tape_slots: int = 0
    workload: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not self.machine:
            raise ValueError("machine must be non-empty")
        if self.kind == "vm" and not self.host:
            raise ValueError(f"vm item {self.machine!r} needs the host it was read through")
        if self.tape_slots < 0:
            raise ValueError("tape_slots must be >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProtectedItem:
        """From JSON-ish data (``time`` as ISO text or datetime); raises ValueError."""
        t = d["time"]
        when = t if isinstance(t, datetime) else datetime.fromisoformat(str(t))
        if when.tzinfo is None:
            raise ValueError(f"time {t!r} needs a timezone")
        return cls(
            kind=d["kind"],
            machine=str(d["machine"]),
            time=when,
            host=d.get("host"),
            vm_uuid=d.get("vm_uuid"),
            remote_device=d.get("remote_device"),
            tape_library=d.get("tape_library"),
            tape_slots=int(d.get("tape_slots", 0)),
            workload=d.get("workload"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "machine": self.machine,
            "time": self.time.isoformat(),
            "host": self.host,
            "vm_uuid": self.vm_uuid,
            "remote_device": self.remote_device,
            "tape_library": self.tape_library,
            "tape_slots": self.tape_slots,
            "workload": self.workload,
        }

    @property
    def identity(self) -> str:
        """What this item counts as (see :mod:`vmkeep.licensing.identity`)."""
        if self.workload:
            return self.workload
        if self.kind == "image":
            return f"image:?:{self.machine}"
        return vm_id(self.machine, self.vm_uuid)


def usage_from_items(
    items: Iterable[ProtectedItem | Mapping[str, Any]], since: datetime | None = None
) -> Usage:
    """The usage of the catalog items protected at or after ``since`` (all when None)."""
    hosts: set[str] = set()
    guests: set[str] = set()
    clients: set[str] = set()
    devices: set[str] = set()
    libs: dict[str, int] = {}
    for raw in items:
        item = raw if isinstance(raw, ProtectedItem) else ProtectedItem.from_dict(raw)
        if since is not None and item.time < since:
            continue
        if item.kind == "vm":
            assert item.host is not None
            hosts.add(machine_id(item.host))
            guests.add(item.identity)
        elif item.kind == "image":
            guests.add(item.identity)
        else:
            clients.add(item.identity)
        if item.remote_device:
            devices.add(machine_id(item.remote_device))
        if item.tape_library:
            key = machine_id(item.tape_library)
            libs[key] = max(libs.get(key, 0), item.tape_slots)
    return Usage(frozenset(hosts), frozenset(guests), frozenset(clients), frozenset(devices), libs)


@dataclass(frozen=True)
class PlannedVm:
    """One VM a run will image: its name, instance UUID (if known) and current host."""

    host: str
    name: str
    uuid: str | None = None


def run_usage(
    image_vms: Sequence[PlannedVm] = (),
    file_clients: Sequence[str] = (),
    remote_device: str | None = None,
    tape_library: str | None = None,
    tape_slots: int = 0,
) -> Usage:
    """What one backup run would use (identities as in :func:`usage_from_items`)."""
    libs = {machine_id(tape_library): tape_slots} if tape_library else {}
    return Usage(
        frozenset(machine_id(v.host) for v in image_vms),
        frozenset(vm_id(v.name, v.uuid) for v in image_vms),
        frozenset(machine_id(c) for c in file_clients),
        frozenset({machine_id(remote_device)} if remote_device else set()),
        libs,
    )
