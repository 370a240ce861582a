"""The licence-check step of the jobs (:mod:`vmkeep.jobs.licence`): in-process with its reports,
the one decision (:func:`vmkeep.tasks.license_check.decide`), and a flow that must be refused
before its snapshot step runs (a real Prefect server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import vmkeep.tasks.license_check as lc
from tests.licensing.licensing_devkeys import write_licence
from vmkeep import clock
from vmkeep.jobs import licence
from vmkeep.licensing.errors import LicenceRefused
from vmkeep.licensing.usage import ProtectedItem
from vmkeep.runtime import LocalRuntime

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)


def catalog(n: int, host: str = "esx1") -> list[dict[str, Any]]:
    return [
        ProtectedItem("vm", f"vm{i}", NOW - timedelta(days=2), host=host, vm_uuid=f"u{i}").as_dict()
        for i in range(n)
    ]


def check(**kwargs: Any) -> dict[str, Any]:
    return licence.check(LocalRuntime(), **kwargs)


@pytest.fixture
def licensed(tmp_path: Path, dev_env: Path) -> Path:
    path = write_licence(tmp_path / "lic.json", esx_server_client_5seat=2, backup_client=2)
    return path


def test_fn_allows_and_returns_plain_data(licensed: Path) -> None:
    with clock.frozen(NOW):
        out = check(
            image_vms=[{"host": "esx2", "name": "vm3", "uuid": "u3"}, ("esx2", "vm4", "u4")],
            catalog=catalog(8),
            licence_file=str(licensed),
        )
    assert out["allowed"] is True
    seats = next(m for m in out["meters"] if m["meter"] == "guest_seats")
    assert (seats["used_before"], seats["used"], seats["licensed"]) == (8, 8, 10)


def test_fn_refuses_one_seat_too_few(licensed: Path) -> None:
    with clock.frozen(NOW), pytest.raises(LicenceRefused) as info:
        check(
            image_vms=[("esx1", "new-vm", "new-uuid")],
            catalog=catalog(10),
            licence_file=str(licensed),
        )
    assert info.value.missing == {"esx_5seat_addon": 1}
    assert "1× ESX 5 Seat Add-on" in str(info.value)


def test_fn_without_licence_is_the_community_tier(dev_env: Path) -> None:
    out = check(file_clients=["db1"])
    assert out["allowed"] is True and out["tier"] == "community"
    clients = [f"db{i}" for i in range(2, 11)]
    assert check(file_clients=clients)["allowed"] is True  # 10 of 10
    with pytest.raises(LicenceRefused, match="community tier") as info:
        check(file_clients=["db11"])
    assert info.value.missing == {"backup_client": 11}
    assert check(file_clients=["db11"], operation="restore")["allowed"] is True


def test_reports(licensed: Path) -> None:
    rt = LocalRuntime()
    with clock.frozen(NOW):
        licence.check(
            rt, image_vms=[("esx1", "vm8", "u8")], catalog=catalog(8), licence_file=str(licensed)
        )
    keys = [k for k, _, _ in rt.reports]
    assert keys == [lc.REPORT_KEY, lc.TABLE_KEY, lc.WARNING_KEY]
    assert "9 of 10 in use (90 %)" in rt.reports[2][2]
    assert any(r["meter"] == "Guest seats" and r["state"] == "warning" for r in rt.reports[1][2])
    rt = LocalRuntime()
    with clock.frozen(NOW):
        licence.check(
            rt, image_vms=[("esx1", "vm1", "u1")], catalog=catalog(2), licence_file=str(licensed)
        )
    assert [k for k, _, _ in rt.reports] == [lc.REPORT_KEY, lc.TABLE_KEY]  # 20 %: no warning
    rt = LocalRuntime()
    with clock.frozen(NOW), pytest.raises(LicenceRefused):
        licence.check(
            rt, image_vms=[("esx3", "x", "x")], catalog=catalog(10), licence_file=str(licensed)
        )
    assert "REFUSED" in rt.reports[0][2]


@pytest.mark.slow
def test_backup_flow_refused_before_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, licensed: Path, prefect_api: str
) -> None:
    """A stand-in VM backup flow: the licence-check step, then snapshot.  With one seat too few
    the flow fails with the licence error and the snapshot task never runs; with enough it does.
    Runs against the session's Prefect server (``prefect_test_harness`` hung once in its
    log/event drain at exit)."""
    from prefect import flow, task
    from prefect.artifacts import Artifact

    monkeypatch.setenv("VMKEEP_LICENSE", str(licensed))
    snapshots: list[str] = []

    @task
    def take_snapshot(vm: str) -> str:
        snapshots.append(vm)
        return f"snap-{vm}"

    @flow
    def backup_vms(vms: list[tuple[str, str, str]], items: list[dict[str, Any]]) -> list[str]:
        from vmkeep.runtime.prefect_runtime import PrefectRuntime

        licence.check(PrefectRuntime(), image_vms=vms, catalog=items)
        return [take_snapshot(vm[1]) for vm in vms]

    with clock.frozen(NOW):
        state = backup_vms([("esx2", "vm-new", "u-new")], catalog(10), return_state=True)
        assert state.is_failed()
        with pytest.raises(LicenceRefused, match="1× ESX 5 Seat Add-on"):
            state.result()
        assert snapshots == []
        report = Artifact.get(lc.REPORT_KEY)
        assert report is not None and "REFUSED" in str(report.data)

        state = backup_vms([("esx2", "vm3", "u3")], catalog(10), return_state=True)
        assert state.is_completed() and snapshots == ["vm3"]
        assert Artifact.get(lc.WARNING_KEY) is not None  # 10 of 10 seats
