"""Licence decisions: refusals name SKU and count, read-only operations always pass, warnings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.licensing.licensing_devkeys import make_licence
from vmkeep.licensing.check import check_licence, licence_status
from vmkeep.licensing.errors import LicenceRefused, LicenceTampered
from vmkeep.licensing.model import Sku, Usage
from vmkeep.licensing.report import render_markdown, table_rows
from vmkeep.licensing.usage import PlannedVm, ProtectedItem, run_usage, usage_from_items

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)


def vm_items(n: int, host: str = "esx1", start: int = 0) -> list[ProtectedItem]:
    return [
        ProtectedItem("vm", f"vm{i}", NOW - timedelta(days=1), host=host, vm_uuid=f"u{i}")
        for i in range(start, start + n)
    ]


def run_vms(*names: str, host: str = "esx1") -> Usage:
    return run_usage([PlannedVm(host, n, f"u{n[2:]}") for n in names])


def test_one_seat_too_few_is_refused_naming_the_addon() -> None:
    lic = make_licence(esx_server_client_5seat=2)  # 10 seats
    current = usage_from_items(vm_items(6) + vm_items(4, host="esx2", start=6))
    d = check_licence(lic, current, run_vms("vm10", host="esx2"), NOW)
    assert not d.allowed
    assert d.missing == {Sku.ESX_5SEAT_ADDON: 1}
    assert d.refusal is not None and d.refusal.missing == {"esx_5seat_addon": 1}
    msg = d.refusal.get_message()
    assert "1× ESX 5 Seat Add-on" in msg and "guest seats 11 needed, 10 licensed" in msg
    assert d.refusal.exit_code == 17
    with pytest.raises(LicenceRefused):
        d.raise_if_refused()


def test_already_protected_vm_and_vmotion_pass() -> None:
    lic = make_licence(esx_server_client_5seat=2)
    current = usage_from_items(vm_items(10))
    # vm3 moved to esx2 (VMotion): a new host, but no new seat
    d = check_licence(lic, current, run_vms("vm3", host="esx2"), NOW)
    assert d.allowed, d.refusal
    assert [m.used for m in d.meters if m.name == "guest_seats"] == [10]


def test_new_host_needs_a_server_client() -> None:
    lic = make_licence(esx_server_client_5seat=1, esx_5seat_addon=3)
    current = usage_from_items(vm_items(3))
    d = check_licence(lic, current, run_vms("vm3", host="esx9"), NOW)
    assert d.missing == {Sku.ESX_SERVER_CLIENT_5SEAT: 1}


def test_missing_server_clients_count_before_addons() -> None:
    lic = make_licence(esx_server_client_5seat=1)
    d = check_licence(
        lic, Usage(), run_usage([PlannedVm(f"esx{i % 2}", f"v{i}") for i in range(8)]), NOW
    )
    assert d.missing == {Sku.ESX_SERVER_CLIENT_5SEAT: 1}  # the 2nd server client brings 5 seats


def test_file_clients_remote_device_and_tape() -> None:
    lic = make_licence(backup_client=1, san_remote_device=0, autoloader_slot=10)
    current = usage_from_items(
        [ProtectedItem("files", "db1", NOW, tape_library="lib1", tape_slots=8)]
    )
    d = check_licence(
        lic,
        current,
        run_usage(file_clients=["db2"], remote_device="mover1", tape_library="lib2", tape_slots=4),
        NOW,
    )
    assert d.missing == {
        Sku.BACKUP_CLIENT: 1,
        Sku.SAN_REMOTE_DEVICE: 1,
        Sku.AUTOLOADER_SLOT: 2,
    }
    same = check_licence(
        lic, current, run_usage(file_clients=["DB1"], tape_library="lib1", tape_slots=8), NOW
    )
    assert same.allowed


def test_esx_host_own_client_needs_no_bc() -> None:
    lic = make_licence(esx_server_client_5seat=1, backup_client=0)
    current = usage_from_items(vm_items(1, host="esx1"))
    assert check_licence(lic, current, run_usage(file_clients=["esx1"]), NOW).allowed
    assert not check_licence(lic, current, run_usage(file_clients=["esx2"]), NOW).allowed


def test_retention_window() -> None:
    old = [ProtectedItem("vm", "gone", NOW - timedelta(days=90), host="esx1")]
    lic = make_licence(esx_server_client_5seat=1)
    current = usage_from_items(old + vm_items(5), since=NOW - timedelta(days=30))
    assert current.guest_seats == 5
    assert usage_from_items(old + vm_items(5)).guest_seats == 6
    assert check_licence(lic, current, run_vms("vm4"), NOW).allowed


@pytest.mark.parametrize(
    ("licence", "fragment"),
    [
        (LicenceTampered("/etc/lic.json"), "modified or is corrupt"),
        (
            make_licence(
                issued=date(2024, 1, 1), expires=date(2025, 5, 31), esx_server_client_5seat=9
            ),
            "expired on 2025-05-31",
        ),
        (make_licence(issued=date(2025, 7, 1), esx_server_client_5seat=9), "not valid before"),
    ],
)
def test_no_usable_licence_refuses_backups_only(licence, fragment: str) -> None:
    d = check_licence(licence, Usage(), run_vms("vm1"), NOW)
    assert not d.allowed and d.refusal is not None
    assert fragment in d.refusal.get_message()
    assert d.refusal.get_message().startswith("Licence refuses the backup")
    for op in ("restore", "list", "ls", "check", "mount"):
        assert check_licence(licence, Usage(), run_vms("vm1"), NOW, operation=op).allowed


def test_read_only_operations_pass_even_when_over() -> None:
    lic = make_licence()
    assert check_licence(lic, Usage(), run_vms("vm1"), NOW, operation="restore").allowed


def test_over_use_without_growth_only_warns() -> None:
    lic = make_licence(esx_server_client_5seat=1)  # renewed smaller: 5 seats, 7 in use
    current = usage_from_items(vm_items(7))
    d = check_licence(lic, current, run_vms("vm2"), NOW)
    assert d.allowed
    assert any("over the licence" in w for w in d.warnings)
    assert d.shortfall == {Sku.ESX_5SEAT_ADDON: 1}
    assert not d.compliant
    assert not check_licence(lic, current, run_vms("vm99"), NOW).allowed


def test_warning_at_90_percent_and_near_expiry() -> None:
    lic = make_licence(esx_server_client_5seat=2)
    d = check_licence(lic, usage_from_items(vm_items(8)), run_vms("vm8"), NOW)
    assert d.allowed and any("9 of 10" in w for w in d.warnings)
    d = check_licence(lic, usage_from_items(vm_items(7)), run_vms("vm7"), NOW)
    assert not d.warnings  # 8 of 10
    soon = make_licence(expires=date(2025, 6, 20), esx_server_client_5seat=2)
    assert any("expires on 2025-06-20" in w for w in licence_status(soon, Usage(), NOW).warnings)


def test_report_rendering() -> None:
    lic = make_licence(customer="ACME | Co", esx_server_client_5seat=2)
    d = check_licence(lic, usage_from_items(vm_items(10)), run_vms("vm10"), NOW)
    md = render_markdown(d)
    assert "REFUSED" in md and "ACME \\| Co" in md and "| Guest seats |" in md
    rows = table_rows(d)
    assert {r["meter"]: r["state"] for r in rows}["Guest seats"] == "OVER"
    js = d.as_dict()
    assert js["skus"]["esx_5seat_addon"] == {"title": "ESX 5 Seat Add-on", "used": 1, "licensed": 0}
    assert js["missing"] == {"esx_5seat_addon": 1} and js["allowed"] is False


def test_catalog_item_dicts_and_validation() -> None:
    items = [
        {"kind": "vm", "machine": "a", "host": "esx1", "time": "2025-05-30T00:00:00+00:00"},
        {
            "kind": "files",
            "machine": "b",
            "time": "2025-05-30T00:00:00+00:00",
            "remote_device": "m1",
        },
    ]
    u = usage_from_items(items)
    assert (u.esx_hosts, u.guest_seats, u.backup_clients, len(u.remote_devices)) == (1, 1, 1, 1)
    with pytest.raises(ValueError):
        ProtectedItem("vm", "a", NOW)  # no host
    with pytest.raises(ValueError):
        usage_from_items([{"kind": "vm", "machine": "a", "host": "h", "time": "2025-01-01"}])


@settings(max_examples=300, deadline=None)
@given(
    seats_licensed=st.integers(0, 6),
    hosts_licensed=st.integers(0, 4),
    existing=st.integers(0, 30),
    adding=st.integers(0, 10),
    hosts=st.integers(1, 4),
)
def test_refusal_iff_new_usage_exceeds_and_buying_missing_fixes_it(
    seats_licensed: int, hosts_licensed: int, existing: int, adding: int, hosts: int
) -> None:
    lic = make_licence(esx_server_client_5seat=hosts_licensed, esx_5seat_addon=seats_licensed)
    items = [ProtectedItem("vm", f"v{i}", NOW, host=f"esx{i % hosts}") for i in range(existing)]
    current = usage_from_items(items)
    run = run_usage([PlannedVm(f"esx{i % hosts}", f"v{existing + i}") for i in range(adding)])
    d = check_licence(lic, current, run, NOW)
    if d.allowed:
        return
    assert d.missing
    counts = lic.counts.as_dict()
    for sku, n in d.missing.items():
        counts[sku.value] += n
    bought = make_licence(**counts)
    assert check_licence(bought, current, run, NOW).allowed


# -- community tier (no licence installed) -----------------------------------------------------
def test_community_tier_protects_ten_workloads_without_a_licence() -> None:
    d = check_licence(None, usage_from_items(vm_items(6)), run_usage(file_clients=["a", "b"]), NOW)
    assert d.allowed and d.tier == "community" and d.problem is None and d.compliant
    assert d.meters[0].name == "workloads" and (d.meters[0].used, d.meters[0].licensed) == (8, 10)
    full = check_licence(None, usage_from_items(vm_items(9)), run_vms("vm-new"), NOW)
    assert full.allowed and "10 of 10 workloads" in full.warnings[0]


def test_community_tier_refusal_names_what_the_planner_says_to_buy() -> None:
    d = check_licence(None, usage_from_items(vm_items(10)), run_vms("vm-new"), NOW)
    assert not d.allowed and d.refusal is not None
    message = d.refusal.get_message()
    assert "community tier" in message and "11 workloads" in message
    # the planner's answer for 11 guests on one host: 1 ESX Server Client + 2 add-ons
    assert d.refusal.missing == {"esx_server_client_5seat": 1, "esx_5seat_addon": 2}
    assert "1× ESX Server Client (5 seat)" in message and "2× ESX 5 Seat Add-on" in message
    assert check_licence(None, usage_from_items(vm_items(10)), run_vms("x"), NOW,
                         operation="restore").allowed


def test_community_tier_has_no_grace_and_no_lan_free_or_tape() -> None:
    over = usage_from_items(vm_items(11))
    assert not check_licence(None, over, run_vms("vm0"), NOW).allowed  # vm0 already counted
    srd = run_usage([PlannedVm("esx1", "vm1", "u1")], remote_device="mover1")
    d = check_licence(None, Usage(), srd, NOW)
    assert not d.allowed and d.refusal is not None and d.refusal.missing["san_remote_device"] == 1
    tape = run_usage(file_clients=["a"], tape_library="lib", tape_slots=8)
    assert not check_licence(None, Usage(), tape, NOW).allowed


def test_an_unusable_licence_is_not_the_community_tier() -> None:
    d = check_licence(LicenceTampered("/etc/lic.json"), Usage(), run_vms("vm1"), NOW)
    assert not d.allowed and d.tier == "unusable"
