"""The licence model: SKUs, what a setup uses, and what it therefore needs.  Pure logic.

SKUs (the user's datasheet, translated):

* **Backup Client (BC)** — one per machine protected by a file-level client: guests with the
  client, other physical clients.  The client on an ESX host needs none when that host has an
  ESX Server Client (it is included).
* **ESX Server Client (5 seat)** — one per ESX host protected by image backup; includes that host's
  BC and 5 guest seats.
* **ESX 5 Seat Add-on** — 5 more guest seats each.  Seats are pooled across all hosts (VMs move
  with VMotion): one seat per *distinct* guest protected by image backup, counted once even if
  it was seen on two hosts.
* **SAN Remote Device (SRD)** — one per LAN-free data mover.
* **Autoloader Support** — one per slot of each tape library or autoloader in use.

**Community tier** (no licence installed): up to :data:`COMMUNITY_WORKLOADS` (10) *workloads*,
where a workload is one guest seat or one backup client as counted above (a distinct guest or
disk image protected by image backup, or a distinct machine protected by file-level backup); any
number of ESX hosts (their ESX Server Clients are included); no SAN Remote Device and no
autoloader slots.  :func:`community_excess` says how a usage goes beyond it; beyond it a site
buys what :func:`requirements` says for its whole usage (a licence replaces the tier).

:class:`Usage` is a set-valued description of what is (or would be) protected, identified by
stable ids (VM instance UUID or name, host UUID or name, …), so that two usages can be united
without double counting.  :func:`requirements` turns a usage into the minimal licence counts;
:func:`meters` compares a usage with licensed counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

SEATS_PER_PACK = 5
"""Guest seats included in one ESX Server Client and in one ESX 5 Seat Add-on."""

COMMUNITY_WORKLOADS = 10
"""Workloads (guest seats + backup clients) the community tier protects without a licence."""


class Sku(StrEnum):
    """Licence SKUs; the values are the keys of licence files and of ``plan --json``."""

    BACKUP_CLIENT = "backup_client"
    ESX_SERVER_CLIENT_5SEAT = "esx_server_client_5seat"
    ESX_5SEAT_ADDON = "esx_5seat_addon"
    SAN_REMOTE_DEVICE = "san_remote_device"
    AUTOLOADER_SLOT = "autoloader_slot"

    @property
    def label(self) -> str:
        """The SKU's name as the price list spells it."""
        return SKU_TITLES[self]


SKU_TITLES: Mapping[Sku, str] = MappingProxyType(
    {
        Sku.BACKUP_CLIENT: "Backup Client (BC)",
        Sku.ESX_SERVER_CLIENT_5SEAT: "ESX Server Client (5 seat)",
        Sku.ESX_5SEAT_ADDON: "ESX 5 Seat Add-on",
        Sku.SAN_REMOTE_DEVICE: "SAN Remote Device (SRD)",
        Sku.AUTOLOADER_SLOT: "Autoloader Support (per slot)",
    }
)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _frozen_map(m: Mapping[str, int] | None) -> Mapping[str, int]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True, eq=False)
class Usage:
    """What is (or would be) protected.  Identities are opaque strings.

    ``file_clients`` may include ESX hosts: a host that is also in ``image_hosts`` is covered by its
    ESX Server Client and needs no BC.  ``tape_libraries`` maps a library to its slot count.
    """

    image_hosts: frozenset[str] = frozenset()
    image_guests: frozenset[str] = frozenset()
    file_clients: frozenset[str] = frozenset()
    remote_devices: frozenset[str] = frozenset()
    tape_libraries: Mapping[str, int] = field(default_factory=lambda: _frozen_map(None))

    def __post_init__(self) -> None:
        for name in ("image_hosts", "image_guests", "file_clients", "remote_devices"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))
        libs = dict(self.tape_libraries)
        for lib, slots in libs.items():
            if not isinstance(slots, int) or isinstance(slots, bool) or slots < 0:
                raise ValueError(f"tape library {lib!r}: slots must be an integer >= 0")
        object.__setattr__(self, "tape_libraries", _frozen_map(libs))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Usage):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[object, ...]:
        return (
            self.image_hosts,
            self.image_guests,
            self.file_clients,
            self.remote_devices,
            frozenset(self.tape_libraries.items()),
        )

    def union(self, other: Usage) -> Usage:
        """Both usages together; a tape library seen with two slot counts keeps the larger."""
        libs = dict(self.tape_libraries)
        for lib, slots in other.tape_libraries.items():
            libs[lib] = max(libs.get(lib, 0), slots)
        return Usage(
            self.image_hosts | other.image_hosts,
            self.image_guests | other.image_guests,
            self.file_clients | other.file_clients,
            self.remote_devices | other.remote_devices,
            libs,
        )

    # -- counts ----------------------------------------------------------------------------
    @property
    def backup_clients(self) -> int:
        """Machines needing a BC: file-level clients that are not image-protected ESX hosts."""
        return len(self.file_clients - self.image_hosts)

    @property
    def esx_hosts(self) -> int:
        return len(self.image_hosts)

    @property
    def guest_seats(self) -> int:
        return len(self.image_guests)

    @property
    def tape_slots(self) -> int:
        return sum(self.tape_libraries.values())

    @property
    def workloads(self) -> int:
        """Guest seats plus backup clients: what the community tier counts."""
        return self.guest_seats + self.backup_clients

    def count(self, meter: str) -> int:
        """The count of one meter (see :data:`METERS`)."""
        value = getattr(self, meter)
        return value if isinstance(value, int) else len(value)


@dataclass(frozen=True)
class Requirements:
    """Licence counts per SKU; field names are the :class:`Sku` values."""

    backup_client: int = 0
    esx_server_client_5seat: int = 0
    esx_5seat_addon: int = 0
    san_remote_device: int = 0
    autoloader_slot: int = 0

    def __post_init__(self) -> None:
        for sku in Sku:
            value = getattr(self, sku.value)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{sku.value}: count must be an integer >= 0, not {value!r}")

    def as_dict(self) -> dict[str, int]:
        return {sku.value: int(getattr(self, sku.value)) for sku in Sku}

    def __getitem__(self, sku: Sku | str) -> int:
        return int(getattr(self, Sku(sku).value))

    @classmethod
    def from_mapping(cls, counts: Mapping[str, int]) -> Requirements:
        unknown = set(counts) - {s.value for s in Sku}
        if unknown:
            raise ValueError(f"unknown SKU(s): {', '.join(sorted(unknown))}")
        return cls(**{k: counts[k] for k in counts})

    @property
    def guest_seats(self) -> int:
        """Guest seats these counts license: 5 per ESX Server Client and per add-on."""
        return SEATS_PER_PACK * (self.esx_server_client_5seat + self.esx_5seat_addon)


def requirements(usage: Usage) -> Requirements:
    """The minimal licences that cover ``usage``."""
    hosts = usage.esx_hosts
    extra_seats = max(0, usage.guest_seats - SEATS_PER_PACK * hosts)
    return Requirements(
        backup_client=usage.backup_clients,
        esx_server_client_5seat=hosts,
        esx_5seat_addon=_ceil_div(extra_seats, SEATS_PER_PACK),
        san_remote_device=len(usage.remote_devices),
        autoloader_slot=usage.tape_slots,
    )


def used_per_sku(usage: Usage, licensed: Requirements) -> Requirements:
    """Usage expressed per SKU against ``licensed``: add-ons used are the seats beyond those that
    the ESX Server Clients (licensed or needed, whichever is more) include, in packs of 5.
    """
    packs = max(usage.esx_hosts, licensed.esx_server_client_5seat)
    extra_seats = max(0, usage.guest_seats - SEATS_PER_PACK * packs)
    return Requirements(
        backup_client=usage.backup_clients,
        esx_server_client_5seat=usage.esx_hosts,
        esx_5seat_addon=_ceil_div(extra_seats, SEATS_PER_PACK),
        san_remote_device=len(usage.remote_devices),
        autoloader_slot=usage.tape_slots,
    )


def missing(usage: Usage, licensed: Requirements) -> dict[Sku, int]:
    """What to buy, on top of ``licensed``, so that it covers ``usage`` (only SKUs short).

    Missing ESX Server Clients are counted first: each brings 5 seats, so fewer add-ons are needed.
    """
    need: dict[Sku, int] = {}
    short_bc = usage.backup_clients - licensed.backup_client
    short_esx = max(0, usage.esx_hosts - licensed.esx_server_client_5seat)
    seats = SEATS_PER_PACK * (
        licensed.esx_server_client_5seat + short_esx + licensed.esx_5seat_addon
    )
    short_addon = _ceil_div(max(0, usage.guest_seats - seats), SEATS_PER_PACK)
    short_srd = len(usage.remote_devices) - licensed.san_remote_device
    short_slots = usage.tape_slots - licensed.autoloader_slot
    for sku, n in (
        (Sku.BACKUP_CLIENT, short_bc),
        (Sku.ESX_SERVER_CLIENT_5SEAT, short_esx),
        (Sku.ESX_5SEAT_ADDON, short_addon),
        (Sku.SAN_REMOTE_DEVICE, short_srd),
        (Sku.AUTOLOADER_SLOT, short_slots),
    ):
        if n > 0:
            need[sku] = n
    return need


@dataclass(frozen=True)
class Meter:
    """One metered quantity: how much is used against how much is licensed.

    ``sku`` is the SKU to buy when the meter runs over (guest seats are bought as add-ons).
    """

    name: str
    title: str
    sku: Sku | None
    used: int
    licensed: int

    @property
    def ratio(self) -> float:
        """Use as a fraction of the licence; ``inf`` when something is used but nothing licensed."""
        if self.licensed == 0:
            return 0.0 if self.used == 0 else float("inf")
        return self.used / self.licensed

    @property
    def over(self) -> bool:
        return self.used > self.licensed

    def as_dict(self) -> dict[str, object]:
        ratio = self.ratio
        return {
            "meter": self.name,
            "title": self.title,
            "sku": self.sku.value if self.sku else None,
            "used": self.used,
            "licensed": self.licensed,
            "percent": None if ratio == float("inf") else round(100 * ratio, 1),
        }


#: (meter name == Usage attribute, title, SKU that extends it)
METERS: tuple[tuple[str, str, Sku], ...] = (
    ("backup_clients", "Backup clients", Sku.BACKUP_CLIENT),
    ("esx_hosts", "ESX hosts", Sku.ESX_SERVER_CLIENT_5SEAT),
    ("guest_seats", "Guest seats", Sku.ESX_5SEAT_ADDON),
    ("remote_devices", "SAN remote devices", Sku.SAN_REMOTE_DEVICE),
    ("tape_slots", "Autoloader slots", Sku.AUTOLOADER_SLOT),
)


def licensed_for(meter: str, licensed: Requirements) -> int:
    """How much of ``meter`` the licensed counts allow."""
    return {
        "backup_clients": licensed.backup_client,
        "esx_hosts": licensed.esx_server_client_5seat,
        "guest_seats": licensed.guest_seats,
        "remote_devices": licensed.san_remote_device,
        "tape_slots": licensed.autoloader_slot,
    }[meter]


def meters(usage: Usage, licensed: Requirements) -> tuple[Meter, ...]:
    """Every meter of ``usage`` against ``licensed``, in :data:`METERS` order."""
    return tuple(
        Meter(name, title, sku, usage.count(name), licensed_for(name, licensed))
        for name, title, sku in METERS
    )


#: the community tier's meters (name == Usage attribute, title, allowance)
COMMUNITY_METERS: tuple[tuple[str, str, int], ...] = (
    ("workloads", "Workloads (community tier)", COMMUNITY_WORKLOADS),
    ("remote_devices", "SAN remote devices", 0),
    ("tape_slots", "Autoloader slots", 0),
)


def community_meters(usage: Usage) -> tuple[Meter, ...]:
    """``usage`` against the community tier's allowance."""
    skus = {"remote_devices": Sku.SAN_REMOTE_DEVICE, "tape_slots": Sku.AUTOLOADER_SLOT}
    return tuple(
        Meter(name, title, skus.get(name), usage.count(name), allowed)
        for name, title, allowed in COMMUNITY_METERS
    )


def community_excess(usage: Usage) -> list[str]:
    """How ``usage`` goes beyond the community tier (empty when it fits), in words."""
    out = []
    if usage.workloads > COMMUNITY_WORKLOADS:
        out.append(
            f"{usage.workloads} workloads ({usage.guest_seats} guest seat(s),"
            f" {usage.backup_clients} backup client(s)), {COMMUNITY_WORKLOADS} included"
        )
    if usage.remote_devices:
        out.append("a LAN-free data mover (SAN Remote Device) is not included")
    if usage.tape_slots:
        out.append("tape libraries and autoloaders are not included")
    return out


def union_all(usages: Iterable[Usage]) -> Usage:
    total = Usage()
    for u in usages:
        total = total.union(u)
    return total
