"""Counting what is protected: the catalog interface and the usage of a planned run.

The repository provides the *catalog*: an iterable of :class:`ProtectedItem`, one per restore point
(or per protected machine, newest first — duplicates are harmless).  :func:`usage_from_items`
counts the distinct hosts, guests, clients, remote devices and tape slots among the items inside
the retention window; :func:`run_usage` describes what one backup run is about to add.  Both
return a :class:`vmkeep.licensing.model.Usage`, so the licence check can unite them.

Identities (shared with the planner): a guest is identified by its instance UUID when known
(``vm_uuid``), else its name; a host, physical client, remote device or tape library by its name
(a file client that is also an image-protected ESX host is recognised by ``machine == host``).
Names compare case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from vmkeep.licensing.model import Usage

ItemKind = Literal["vm", "files"]


@dataclass(frozen=True)
class ProtectedItem:
    """Something the repository protected, at ``time``.

    * ``kind="vm"``: an image backup of VM ``machine`` read through ESX host ``host``.
    * ``kind="files"``: a file-level backup of client ``machine`` (a guest, a physical machine, or
      an ESX host itself); ``host`` is unused; ``vm_uuid`` when the client is a guest whose
      instance UUID is known.
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

    def __post_init__(self) -> None:
        if self.kind not in ("vm", "files"):
            raise ValueError(f"kind must be 'vm' or 'files', not {self.kind!r}")
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
        }


def machine_id(name: str) -> str:
    return f"name:{name.lower()}"


def vm_id(name: str, uuid: str | None) -> str:
    """A guest's identity: the same as the planner's (``uuid:`` when known, else ``name:``)."""
    return f"uuid:{uuid.lower()}" if uuid else machine_id(name)


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
            guests.add(vm_id(item.machine, item.vm_uuid))
        else:
            clients.add(vm_id(item.machine, item.vm_uuid))
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
