"""The licence planner: from a description of a site to the licences it needs.

Input (``vmkeep license plan ENV.json``)::

    {"esx_hosts": [{"name": "esx1", "uuid": "…", "client": true, "image": true,
                    "guests": [{"name": "vm1", "uuid": "…", "client": true, "image": true}]}],
     "other_clients": 0,          # or a list of names
     "remote_devices": 0,         # or a list of names: LAN-free data movers (SRDs)
     "tape_libraries": [{"name": "lib1", "slots": 24}]}

Contract (documented for users in docs/licensing.md):

* A guest is identified by ``uuid`` when given, else by ``name``; the same guest listed under two
  hosts (VMotion) is one machine: one seat and at most one BC.  Its flags are OR-ed.
* ``guest.image`` (default true): protected by image backup → one pooled guest seat.
  ``guest.client`` (default false): a file-level client runs in the guest → one BC.
* A host needs an ESX Server Client when it is protected by image backup: ``host.image`` when
  given, else when any of its guests has ``image``.  ``host.image: false`` with image guests is
  an error.  ``host.client`` (default false) is a file-level client on the host itself: included
  in its ESX Server Client, otherwise one BC.  Every seed example's "SEP Client on … ESX Computer"
  is that included client, so it never appears in the BC count.
* ``other_clients``: physical machines with a file-level client (one BC each).
* Unknown keys are rejected (a typo must not silently change a plan).
* Every plan notes whether the site fits the community tier (10 workloads = guest seats + BCs,
  no SRD, no autoloader slots; :mod:`vmkeep.licensing.model`): then it needs no licence at all.

:func:`environment_from_inventory` maps the vSphere library's inventory
(``{"hosts": [{"name", "uuid", "vms": [{"name", "uuid"}]}]}``) onto the same input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmkeep.licensing.errors import PlanInputError
from vmkeep.licensing.model import (
    COMMUNITY_WORKLOADS,
    Requirements,
    Usage,
    community_excess,
    requirements,
)
from vmkeep.licensing.usage import machine_id, vm_id

_ENV_KEYS = {"esx_hosts", "other_clients", "remote_devices", "tape_libraries", "comment"}
_HOST_KEYS = {"name", "uuid", "guests", "client", "image", "comment"}
_GUEST_KEYS = {"name", "uuid", "client", "image", "comment"}
_LIB_KEYS = {"name", "slots", "comment"}


@dataclass(frozen=True)
class Guest:
    id: str
    name: str
    client: bool = False
    image: bool = True


@dataclass(frozen=True)
class EsxHost:
    id: str
    name: str
    guests: tuple[Guest, ...] = ()
    client: bool = False
    image: bool | None = None

    @property
    def image_protected(self) -> bool:
        return self.image if self.image is not None else any(g.image for g in self.guests)


@dataclass(frozen=True)
class Environment:
    esx_hosts: tuple[EsxHost, ...] = ()
    other_clients: tuple[str, ...] = ()
    remote_devices: tuple[str, ...] = ()
    tape_libraries: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Plan:
    """A plan: the usage the environment implies, the licences it needs, and why."""

    usage: Usage
    requirements: Requirements
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, int]:
        return self.requirements.as_dict()


# -- parsing -------------------------------------------------------------------------------------
def _where(path: str) -> str:
    return path or "top level"


def _obj(value: Any, path: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanInputError(f"{_where(path)}: expected an object, got {type(value).__name__}")
    unknown = sorted(set(value) - keys)
    if unknown:
        allowed = ", ".join(sorted(keys))
        bad = ", ".join(unknown)
        raise PlanInputError(f"{_where(path)}: unknown key(s) {bad} (allowed: {allowed})")
    return value


def _bool(obj: Mapping[str, Any], key: str, default: bool | None, path: str) -> bool | None:
    value = obj.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise PlanInputError(f"{path}.{key}: expected true or false, got {value!r}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PlanInputError(f"{path}: expected a non-empty string, got {value!r}")
    return value


def _count(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PlanInputError(f"{path}: expected an integer >= 0, got {value!r}")
    return value


def _identity(obj: Mapping[str, Any], path: str, prefer_uuid: bool) -> tuple[str, str]:
    """(id, display name), the same ids :mod:`vmkeep.licensing.usage` gives catalog items:
    guests (``prefer_uuid``) by ``uuid`` when given, else ``name``; hosts by ``name`` when given,
    else ``uuid``.  Names compare case-insensitively.
    """
    name = obj.get("name")
    uuid = obj.get("uuid")
    if uuid is None and name is None:
        raise PlanInputError(f"{path}: needs a name or a uuid")
    n = _str(name, f"{path}.name") if name is not None else None
    u = _str(uuid, f"{path}.uuid") if uuid is not None else None
    if u is not None and (prefer_uuid or n is None):
        return vm_id(n or u, u), n or u
    assert n is not None
    return machine_id(n), n


def _names(value: Any, path: str, prefix: str) -> tuple[str, ...]:
    """An integer n (anonymous items) or a list of distinct names."""
    if isinstance(value, list):
        names = tuple(_str(v, f"{path}[{i}]") for i, v in enumerate(value))
        if len({n.lower() for n in names}) != len(names):
            raise PlanInputError(f"{path}: names must be distinct")
        return tuple(machine_id(n) for n in names)
    n = _count(value, path)
    return tuple(f"{prefix}#{i + 1}" for i in range(n))


def parse_environment(data: Any) -> Environment:
    """Validate the planner's JSON input; raises :class:`PlanInputError` naming the bad field."""
    env = _obj(data, "", _ENV_KEYS)
    hosts_raw = env.get("esx_hosts", [])
    if not isinstance(hosts_raw, list):
        raise PlanInputError("esx_hosts: expected a list")
    hosts: list[EsxHost] = []
    seen_hosts: set[str] = set()
    for i, h in enumerate(hosts_raw):
        path = f"esx_hosts[{i}]"
        hobj = _obj(h, path, _HOST_KEYS)
        hid, hname = _identity(hobj, path, prefer_uuid=False)
        if hid in seen_hosts:
            raise PlanInputError(f"{path}: host {hname!r} is listed twice")
        seen_hosts.add(hid)
        guests_raw = hobj.get("guests", [])
        if not isinstance(guests_raw, list):
            raise PlanInputError(f"{path}.guests: expected a list")
        guests = []
        for j, g in enumerate(guests_raw):
            gpath = f"{path}.guests[{j}]"
            gobj = _obj(g, gpath, _GUEST_KEYS)
            gid, gname = _identity(gobj, gpath, prefer_uuid=True)
            guests.append(
                Guest(
                    gid,
                    gname,
                    client=bool(_bool(gobj, "client", False, gpath)),
                    image=bool(_bool(gobj, "image", True, gpath)),
                )
            )
        host = EsxHost(
            hid,
            hname,
            tuple(guests),
            client=bool(_bool(hobj, "client", False, path)),
            image=_bool(hobj, "image", None, path),
        )
        if host.image is False and any(g.image for g in guests):
            raise PlanInputError(f"{path}: image is false but some guests have image backup")
        hosts.append(host)
    libs_raw = env.get("tape_libraries", [])
    if not isinstance(libs_raw, list):
        raise PlanInputError("tape_libraries: expected a list")
    libs: list[tuple[str, int]] = []
    for i, lib in enumerate(libs_raw):
        path = f"tape_libraries[{i}]"
        lobj = _obj(lib, path, _LIB_KEYS)
        name = _str(lobj.get("name"), f"{path}.name")
        if name.lower() in {n.lower() for n, _ in libs}:
            raise PlanInputError(f"{path}: library {name!r} is listed twice")
        if "slots" not in lobj:
            raise PlanInputError(f"{path}: needs slots")
        libs.append((name, _count(lobj["slots"], f"{path}.slots")))
    return Environment(
        tuple(hosts),
        _names(env.get("other_clients", 0), "other_clients", "other-client"),
        _names(env.get("remote_devices", 0), "remote_devices", "remote-device"),
        tuple(libs),
    )


# -- planning ------------------------------------------------------------------------------------
def usage_of(env: Environment) -> Usage:
    """The usage an environment implies (see the module docstring for the rules)."""
    image_hosts = {h.id for h in env.esx_hosts if h.image_protected}
    image_guests = {g.id for h in env.esx_hosts for g in h.guests if g.image}
    clients = {g.id for h in env.esx_hosts for g in h.guests if g.client}
    clients |= {h.id for h in env.esx_hosts if h.client}
    clients |= set(env.other_clients)
    return Usage(
        frozenset(image_hosts),
        frozenset(image_guests),
        frozenset(clients),
        frozenset(env.remote_devices),
        {machine_id(n): slots for n, slots in env.tape_libraries},
    )


def _explain(env: Environment, usage: Usage, req: Requirements) -> tuple[str, ...]:
    notes: list[str] = []
    guest_clients = {g.id for h in env.esx_hosts for g in h.guests if g.client}
    if guest_clients or env.other_clients:
        notes.append(
            f"{req.backup_client} BC: {len(guest_clients)} guest(s) with a file-level client"
            f" + {len(env.other_clients)} other client(s)"
            + (
                f" + {len({h.id for h in env.esx_hosts if h.client and not h.image_protected})}"
                " host client(s) without image backup"
                if any(h.client and not h.image_protected for h in env.esx_hosts)
                else ""
            )
        )
    if usage.esx_hosts:
        notes.append(
            f"{req.esx_server_client_5seat} ESX Server Client(s): one per host with image backup;"
            " each includes the host's own client and 5 guest seats"
        )
    dupes = sum(len(h.guests) for h in env.esx_hosts) - len(
        {g.id for h in env.esx_hosts for g in h.guests}
    )
    if usage.guest_seats:
        notes.append(
            f"{usage.guest_seats} distinct image-protected guest(s), pooled across hosts"
            + (f" ({dupes} listed on more than one host, counted once)" if dupes else "")
            + f"; {5 * req.esx_server_client_5seat} seat(s) included"
            + (f" → {req.esx_5seat_addon} add-on(s)" if req.esx_5seat_addon else "")
        )
    if req.san_remote_device:
        notes.append(f"{req.san_remote_device} SRD: one per LAN-free data mover")
    if req.autoloader_slot:
        notes.append(
            f"{req.autoloader_slot} autoloader slot(s): "
            + ", ".join(f"{n} ({s})" for n, s in env.tape_libraries)
        )
    return tuple(notes)


def plan(env: Environment, extra: Usage | None = None) -> Plan:
    """The licences ``env`` needs; ``extra`` (e.g. a catalog's usage) is added to it."""
    usage = usage_of(env)
    if extra is not None:
        usage = usage.union(extra)
    req = requirements(usage)
    return Plan(usage, req, (*_explain(env, usage, req), community_note(usage)))


def community_note(usage: Usage) -> str:
    """Whether the site fits the community tier (no licence needed), in the planner's words."""
    excess = community_excess(usage)
    if not excess:
        return (
            f"fits the community tier ({usage.workloads} of {COMMUNITY_WORKLOADS} workloads):"
            " no licence needed; buy the licences above to grow beyond it"
        )
    return "beyond the community tier (" + "; ".join(excess) + "): a licence is needed"


def plan_json(data: Any) -> Plan:
    """Parse and plan in one step."""
    return plan(parse_environment(data))


# -- inventory -----------------------------------------------------------------------------------
def environment_from_inventory(
    inventory: Any,
    *,
    clients: Iterable[str] = (),
    exclude: Iterable[str] = (),
    other_clients: int | Sequence[str] = 0,
    remote_devices: int | Sequence[str] = 0,
    tape_libraries: Mapping[str, int] | None = None,
) -> Environment:
    """Map a live inventory onto planner input: every VM is protected by image backup unless
    excluded (by name or uuid); ``clients`` names/uuids the guests with a file-level client (a
    VM entry may also say ``"client": true``).  Extra keys in the inventory are ignored.
    """
    if not isinstance(inventory, Mapping) or not isinstance(inventory.get("hosts"), list):
        raise PlanInputError("inventory: expected an object with a list of hosts")
    client_set = {c.lower() for c in clients}
    exclude_set = {e.lower() for e in exclude}
    hosts = []
    for i, h in enumerate(inventory["hosts"]):
        if not isinstance(h, Mapping):
            raise PlanInputError(f"inventory hosts[{i}]: expected an object")
        vms_raw = h.get("vms", h.get("guests", []))
        if not isinstance(vms_raw, list):
            raise PlanInputError(f"inventory hosts[{i}].vms: expected a list")
        guests = []
        for vm in vms_raw:
            if not isinstance(vm, Mapping):
                raise PlanInputError(f"inventory hosts[{i}].vms: expected objects")
            uuid = vm.get("uuid") or vm.get("instance_uuid")
            keys = {str(k).lower() for k in (vm.get("name"), uuid) if k}
            g: dict[str, Any] = {"name": vm.get("name")} if vm.get("name") else {}
            if uuid:
                g["uuid"] = uuid
            g["image"] = not (keys & exclude_set)
            g["client"] = bool(vm.get("client", False)) or bool(keys & client_set)
            guests.append(g)
        host: dict[str, Any] = {"guests": guests}
        for k in ("name", "uuid"):
            if h.get(k):
                host[k] = h[k]
        hosts.append(host)
    data: dict[str, Any] = {
        "esx_hosts": hosts,
        "other_clients": other_clients if isinstance(other_clients, int) else list(other_clients),
        "remote_devices": (
            remote_devices if isinstance(remote_devices, int) else list(remote_devices)
        ),
        "tape_libraries": [{"name": n, "slots": s} for n, s in (tape_libraries or {}).items()],
    }
    return parse_environment(data)
