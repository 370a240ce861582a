"""Snapshot names and markers: vmkeep recognises only its own snapshots; sweep selection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vmkeep import clock
from vmkeep.errors import UsageError
from vmkeep.vsphere import snapshots
from vmkeep.vsphere.errors import SnapshotRemoveFailed
from vmkeep.vsphere.snapshots import (
    FoundSnapshot,
    make_description,
    parse_marker,
    snapshot_name,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_name_and_marker_round_trip() -> None:
    name = snapshot_name("run-42.a_b")
    assert name == "vmkeep-run-42.a_b"
    marker = parse_marker(name, make_description("run-42.a_b", T0))
    assert marker is not None and marker.run_id == "run-42.a_b" and marker.created == T0


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "x" * 65, "run;created=1", "ü"])
def test_bad_run_ids_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        snapshot_name(bad)


@pytest.mark.parametrize(
    ("name", "description"),
    [
        ("vmkeep-r1", None),
        ("vmkeep-r1", "user snapshot"),
        ("vmkeep-r1", "vmkeep:run=r2;created=2026-01-02T03:04:05+00:00"),  # name/marker differ
        ("before-upgrade", "vmkeep:run=r1;created=2026-01-02T03:04:05+00:00"),
        ("vmkeep-r1", "vmkeep:run=r1;created=2026-01-02T03:04:05"),  # no timezone
        ("vmkeep-r1", "vmkeep:run=r1;created=yesterday"),
        ("vmkeep-r1", "note\nvmkeep:run=r1;created=2026-01-02T03:04:05+00:00"),  # not line 1
    ],
)
def test_foreign_snapshots_not_recognised(name: str, description: str | None) -> None:
    assert parse_marker(name, description) is None


def _found(run: str, created: datetime) -> tuple[FoundSnapshot, snapshots.Marker]:
    snap = FoundSnapshot(object(), object(), "vm1", "uuid", snapshot_name(run), "", created)
    return snap, snapshots.Marker(run, created)


def test_sweep_selects_stale_inactive_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    found = [
        _found("old", T0 - timedelta(hours=30)),
        _found("active", T0 - timedelta(hours=30)),
        _found("young", T0 - timedelta(minutes=5)),
        _found("stuck", T0 - timedelta(days=3)),
    ]
    removed: list[str] = []

    def remove(session: Any, vm: Any, ref: Any, name: str) -> None:
        if name == "vmkeep-stuck":
            raise SnapshotRemoveFailed(name, "vm1", "locked")
        removed.append(name)

    monkeypatch.setattr(snapshots, "find_vmkeep_snapshots", lambda session: found)
    monkeypatch.setattr(snapshots, "remove_snapshot", remove)
    with clock.frozen(T0):
        report = snapshots.sweep_snapshots(None, timedelta(hours=1), {"active"})  # type: ignore[arg-type]
    assert removed == ["vmkeep-old"]
    assert [s.name for s in report.removed] == ["vmkeep-old"]
    assert [s.name for s, _ in report.failed] == ["vmkeep-stuck"]
    assert sorted(s.name for s in report.kept) == ["vmkeep-active", "vmkeep-young"]
