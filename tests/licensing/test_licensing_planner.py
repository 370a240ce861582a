"""The planner: the user's three setups, input rules, and properties (hypothesis)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkeep.licensing.errors import PlanInputError
from vmkeep.licensing.model import Requirements, Usage, missing, requirements
from vmkeep.licensing.planner import environment_from_inventory, parse_environment, plan_json


def site(guests_per_host: list[int], client: bool = True, **extra: Any) -> dict[str, Any]:
    n = 0
    hosts = []
    for h, count in enumerate(guests_per_host):
        guests = []
        for _ in range(count):
            n += 1
            guests.append({"name": f"vm{n}", "client": client})
        hosts.append({"name": f"esx{h + 1}", "guests": guests})
    return {"esx_hosts": hosts, **extra}


# -- the user's datasheet ------------------------------------------------------------------------
def test_seed_standalone_esx_server() -> None:
    """5 machines with a client: 1 ESX host + 4 guests → 4 BC + 1 ESX Server Client."""
    assert plan_json(site([4])).as_dict() == {
        "backup_client": 4,
        "esx_server_client_5seat": 1,
        "esx_5seat_addon": 0,
        "san_remote_device": 0,
        "autoloader_slot": 0,
    }


def test_seed_esx_server_combination_vmotion() -> None:
    """13 clients: 2 ESX hosts + 11 guests → 11 BC, 2 ESX Server Client, 1 add-on."""
    assert plan_json(site([6, 5])).as_dict() == {
        "backup_client": 11,
        "esx_server_client_5seat": 2,
        "esx_5seat_addon": 1,
        "san_remote_device": 0,
        "autoloader_slot": 0,
    }


def test_seed_esx_server_combination_lanfree() -> None:
    """10 clients: 1 ESX host + 9 guests, one remote device → 9 BC, 1 ESX, 1 SRD, 1 add-on."""
    assert plan_json(site([9], remote_devices=1)).as_dict() == {
        "backup_client": 9,
        "esx_server_client_5seat": 1,
        "esx_5seat_addon": 1,
        "san_remote_device": 1,
        "autoloader_slot": 0,
    }


def test_seed_lanfree_with_san_tape_library_needs_slots() -> None:
    p = plan_json(site([9], remote_devices=1, tape_libraries=[{"name": "lib1", "slots": 24}]))
    assert p.requirements.autoloader_slot == 24


def test_seed_host_client_is_included() -> None:
    """Saying the ESX host has the client too changes nothing (it is included)."""
    env = site([4])
    env["esx_hosts"][0]["client"] = True
    assert plan_json(env).requirements == plan_json(site([4])).requirements


# -- rules ---------------------------------------------------------------------------------------
def test_issue_example_input() -> None:
    env = {
        "esx_hosts": [{"name": "esx1", "guests": [{"name": "vm1", "client": True, "image": True}]}],
        "other_clients": 0,
        "remote_devices": 0,
        "tape_libraries": [{"name": "lib1", "slots": 24}],
    }
    assert plan_json(env).as_dict() == {
        "backup_client": 1,
        "esx_server_client_5seat": 1,
        "esx_5seat_addon": 0,
        "san_remote_device": 0,
        "autoloader_slot": 24,
    }


def test_guest_on_two_hosts_counted_once_by_uuid() -> None:
    env = {
        "esx_hosts": [
            {"name": "esx1", "guests": [{"name": "a", "uuid": "U-1", "client": True}]},
            {"name": "esx2", "guests": [{"name": "a-renamed", "uuid": "u-1", "client": True}]},
        ]
    }
    p = plan_json(env)
    assert p.usage.guest_seats == 1
    assert p.requirements.backup_client == 1
    assert p.requirements.esx_server_client_5seat == 2


def test_same_name_different_uuid_are_two_guests() -> None:
    env = {
        "esx_hosts": [
            {"name": "esx1", "guests": [{"name": "a", "uuid": "1"}, {"name": "a", "uuid": "2"}]}
        ]
    }
    assert plan_json(env).usage.guest_seats == 2


def test_client_only_guests_need_no_seat_and_host_no_server_client() -> None:
    env = {
        "esx_hosts": [{"name": "esx1", "guests": [{"name": "a", "client": True, "image": False}]}]
    }
    assert plan_json(env).as_dict() == {
        "backup_client": 1,
        "esx_server_client_5seat": 0,
        "esx_5seat_addon": 0,
        "san_remote_device": 0,
        "autoloader_slot": 0,
    }


def test_host_client_without_image_backup_needs_a_bc() -> None:
    env = {"esx_hosts": [{"name": "esx1", "client": True, "guests": []}]}
    assert plan_json(env).requirements.backup_client == 1
    env["esx_hosts"][0]["image"] = True  # an empty VMotion target protected by image backup
    r = plan_json(env).requirements
    assert (r.backup_client, r.esx_server_client_5seat) == (0, 1)


def test_other_clients_and_named_lists() -> None:
    p = plan_json({"other_clients": ["db1", "DB2"], "remote_devices": ["mover1"]})
    assert (p.requirements.backup_client, p.requirements.san_remote_device) == (2, 1)
    assert plan_json({"other_clients": 3}).requirements.backup_client == 3


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ([], "expected an object"),
        ({"esx_host": []}, "unknown key(s) esx_host"),
        ({"esx_hosts": [{"guests": []}]}, "needs a name or a uuid"),
        ({"esx_hosts": [{"name": "e", "guests": [{"name": "v", "imgae": True}]}]}, "imgae"),
        ({"esx_hosts": [{"name": "e", "guests": [{"name": "v", "client": "yes"}]}]}, "true or"),
        ({"esx_hosts": [{"name": "e"}, {"name": "E"}]}, "listed twice"),
        ({"esx_hosts": [{"name": "e", "image": False, "guests": [{"name": "v"}]}]}, "image is"),
        ({"other_clients": -1}, "integer >= 0"),
        ({"other_clients": True}, "integer >= 0"),
        ({"tape_libraries": [{"name": "l"}]}, "needs slots"),
        ({"tape_libraries": [{"name": "l", "slots": 1}, {"name": "l", "slots": 2}]}, "twice"),
        ({"remote_devices": ["a", "A"]}, "distinct"),
    ],
)
def test_bad_input_is_named(env: Any, fragment: str) -> None:
    with pytest.raises(PlanInputError) as info:
        parse_environment(env)
    assert fragment in str(info.value)
    assert info.value.exit_code == 14


def test_inventory_mapping() -> None:
    inv = {
        "hosts": [
            {
                "name": "esx1",
                "vms": [{"name": "a", "uuid": "1"}, {"name": "b", "uuid": "2", "power": "on"}],
            },
            {"name": "esx2", "vms": [{"name": "c", "uuid": "3"}, {"name": "a", "uuid": "1"}]},
            {"name": "esx3", "vms": [{"name": "tmpl", "uuid": "4"}]},
        ]
    }
    env = environment_from_inventory(
        inv, clients=["b", "3"], exclude=["tmpl"], remote_devices=1, tape_libraries={"l": 8}
    )
    from vmkeep.licensing.planner import plan

    assert plan(env).as_dict() == {
        "backup_client": 2,
        "esx_server_client_5seat": 2,
        "esx_5seat_addon": 0,
        "san_remote_device": 1,
        "autoloader_slot": 8,
    }


# -- properties ----------------------------------------------------------------------------------
host_sizes = st.lists(st.integers(min_value=0, max_value=25), min_size=1, max_size=6)
flags = st.booleans()


@st.composite
def environments(draw: st.DrawFn) -> dict[str, Any]:
    sizes = draw(host_sizes)
    n = 0
    hosts = []
    for h, size in enumerate(sizes):
        guests = []
        for _ in range(size):
            n += 1
            guests.append({"name": f"vm{n}", "client": draw(flags), "image": draw(flags)})
        hosts.append({"name": f"esx{h}", "guests": guests})
    return {
        "esx_hosts": hosts,
        "other_clients": draw(st.integers(0, 10)),
        "remote_devices": draw(st.integers(0, 3)),
        "tape_libraries": [
            {"name": f"lib{i}", "slots": s}
            for i, s in enumerate(draw(st.lists(st.integers(0, 80), max_size=3)))
        ],
    }


def le(a: Requirements, b: Requirements) -> bool:
    """``b`` needs at least what ``a`` does.  Add-ons alone are not monotonic (a new host brings 5
    seats, so 1 host + 6 guests needs an add-on and 2 hosts + 7 guests none), but seat packs
    (server clients + add-ons) are, as is every other SKU; a licence covering ``b`` covers ``a``.
    """

    def vector(r: Requirements) -> tuple[int, ...]:
        return (
            r.backup_client,
            r.esx_server_client_5seat,
            r.esx_server_client_5seat + r.esx_5seat_addon,
            r.san_remote_device,
            r.autoloader_slot,
        )

    return all(x <= y for x, y in zip(vector(a), vector(b), strict=True))


def test_addons_alone_may_drop_when_a_host_is_added() -> None:
    assert plan_json(site([6])).requirements.esx_5seat_addon == 1
    assert plan_json(site([6, 1])).requirements.esx_5seat_addon == 0


@settings(max_examples=200, deadline=None)
@given(environments(), st.data())
def test_monotonic_in_guests(env: dict[str, Any], data: st.DataObject) -> None:
    before = plan_json(env).requirements
    bigger = copy.deepcopy(env)
    host = data.draw(st.sampled_from(bigger["esx_hosts"]))
    host["guests"].append(
        {"name": "new-guest", "client": data.draw(flags), "image": data.draw(flags)}
    )
    after = plan_json(bigger)
    assert le(before, after.requirements)
    assert not missing(plan_json(env).usage, after.requirements)


@settings(max_examples=200, deadline=None)
@given(environments(), st.integers(0, 12))
def test_monotonic_in_hosts(env: dict[str, Any], guests: int) -> None:
    before = plan_json(env).requirements
    bigger = copy.deepcopy(env)
    bigger["esx_hosts"].append(
        {"name": "new-host", "guests": [{"name": f"nh{i}"} for i in range(guests)]}
    )
    after = plan_json(bigger).requirements
    assert le(before, after)
    if guests:
        assert after.esx_server_client_5seat == before.esx_server_client_5seat + 1


@settings(max_examples=200, deadline=None)
@given(environments(), st.integers(0, 100))
def test_monotonic_in_slots(env: dict[str, Any], slots: int) -> None:
    before = plan_json(env).requirements
    bigger = copy.deepcopy(env)
    bigger["tape_libraries"].append({"name": "another", "slots": slots})
    after = plan_json(bigger).requirements
    assert le(before, after)
    assert after.autoloader_slot == before.autoloader_slot + slots


@settings(max_examples=200, deadline=None)
@given(environments())
def test_seats_cover_guests_minimally(env: dict[str, Any]) -> None:
    p = plan_json(env)
    r = p.requirements
    assert r.guest_seats >= p.usage.guest_seats
    if r.esx_5seat_addon:
        assert r.guest_seats - 5 < p.usage.guest_seats
    assert requirements(p.usage) == r


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_seats_are_pooled(sizes: list[int], rnd: Any) -> None:
    """Only the number of distinct guests matters, not which host they run on."""
    total = sum(sizes)
    names = [f"vm{i}" for i in range(total)]
    rnd.shuffle(names)
    hosts = []
    for h, size in enumerate(sizes):
        hosts.append({"name": f"esx{h}", "guests": [{"name": names.pop()} for _ in range(size)]})
    # a different distribution over the same hosts, each host keeping at least one guest
    other = [{"name": f"esx{h}", "guests": [{"name": f"vm{h}"}]} for h in range(len(sizes))]
    for i in range(len(sizes), total):
        other[rnd.randrange(len(sizes))]["guests"].append({"name": f"vm{i}"})
    a = plan_json({"esx_hosts": hosts}).requirements
    b = plan_json({"esx_hosts": other}).requirements
    assert a == b
    assert a.esx_5seat_addon == max(0, -(-(total - 5 * len(sizes)) // 5))


@settings(max_examples=200, deadline=None)
@given(environments(), st.data())
def test_guest_on_two_hosts_counted_once(env: dict[str, Any], data: st.DataObject) -> None:
    """VMotion: listing a guest under a second host (where it now runs) adds no seat or BC."""
    guests = [g for h in env["esx_hosts"] for g in h["guests"]]
    if not guests or len(env["esx_hosts"]) < 2:
        return
    before = plan_json(env)
    moved = copy.deepcopy(env)
    g = data.draw(st.sampled_from(guests))
    target = data.draw(st.sampled_from(moved["esx_hosts"]))
    target["guests"].append(dict(g))
    after = plan_json(moved)
    assert after.usage.guest_seats == before.usage.guest_seats
    assert after.requirements.backup_client == before.requirements.backup_client
    assert after.requirements.esx_5seat_addon <= before.requirements.esx_5seat_addon


def test_usage_union_keeps_larger_library() -> None:
    a = Usage(tape_libraries={"l": 8})
    b = Usage(tape_libraries={"l": 24, "m": 2})
    assert a.union(b).tape_slots == 26


def test_plan_says_whether_the_site_fits_the_community_tier() -> None:
    small = plan_json({"esx_hosts": [{"name": "esx1", "guests": [{"name": f"vm{i}"}
                                                                  for i in range(7)]}],
                       "other_clients": 3})
    assert "fits the community tier (10 of 10 workloads)" in small.notes[-1]
    big = plan_json({"esx_hosts": [{"name": "esx1", "guests": [{"name": f"vm{i}"}
                                                                for i in range(11)]}]})
    assert big.notes[-1].startswith("beyond the community tier (11 workloads")
    lan_free = plan_json({"esx_hosts": [{"name": "esx1", "guests": [{"name": "vm1"}]}],
                          "remote_devices": 1})
    assert "SAN Remote Device" in lan_free.notes[-1]
