"""CBT decisions and change-area paging: never a silent incremental."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from vmkeep.vsphere.cbt import (
    CbtOrigin,
    CbtStatus,
    DiskState,
    cbt_plan,
    hardware_version,
    origin_of,
    parse_change_id,
    periodic_scan_due,
    query_changed_areas,
    star_rule,
)
from vmkeep.vsphere.errors import ChangeTrackingError, VSphereError

CID = "52 de 8a 11 22 33 44 55-66 77 88 99 aa bb cc dd/{}"
BASE = DiskState(CID.format(4), 1 << 30, "[ds1] vm/vm.vmdk", True, "uuid-1")


def test_parse_change_id() -> None:
    assert parse_change_id(CID.format(7)) == (CID.format(7).rsplit("/", 1)[0], 7)
    assert parse_change_id("0011223344556677-8899aabbccddeeff/3") is not None
    for bad in (None, "", "*", "garbage", "52 de/x", CID.format(""), "/3"):
        assert parse_change_id(bad) is None


def test_incremental_when_everything_lines_up() -> None:
    current = replace(BASE, change_id=CID.format(5), file_name="[ds1] vm/vm-000001.vmdk")
    assert cbt_plan(BASE, current)[0] == "cbt"


@pytest.mark.parametrize(
    ("prev", "current", "mode", "reason"),
    [
        (None, BASE, "full", "first backup"),
        (BASE, replace(BASE, cbt_enabled=False), "scan", "disabled"),
        (replace(BASE, cbt_enabled=False), BASE, "scan", "was off"),
        (BASE, replace(BASE, capacity=2 << 30), "scan", "resized"),
        (BASE, replace(BASE, file_name="[ds2] vm/vm.vmdk"), "scan", "moved"),
        (BASE, replace(BASE, uuid="uuid-2"), "scan", "replaced"),
        (replace(BASE, change_id=None), BASE, "scan", "previous change id"),
        (BASE, replace(BASE, change_id="bogus"), "scan", "current change id"),
        (BASE, replace(BASE, change_id="00 11-22 33/9"), "scan", "reset"),
        (BASE, replace(BASE, change_id=CID.format(2)), "scan", "backwards"),
    ],
)
def test_falls_back_with_a_reason(
    prev: DiskState | None, current: DiskState, mode: str, reason: str
) -> None:
    got_mode, got_reason = cbt_plan(prev, current)
    assert got_mode == mode
    assert reason in got_reason


class FakeVM:
    """QueryChangedDiskAreas answering in pages of ``page`` bytes."""

    def __init__(self, areas: list[tuple[int, int]], page: int, fault: Exception | None = None):
        self.areas, self.page, self.fault, self.calls = areas, page, fault, []

    def QueryChangedDiskAreas(self, snap: Any, key: int, start: int, cid: str) -> Any:
        self.calls.append(start)
        if self.fault:
            raise self.fault
        end = start + self.page
        inside = [
            SimpleNamespace(start=o, length=n) for o, n in self.areas if start <= o < end
        ]
        length = max([a.start + a.length for a in inside] + [end]) - start
        return SimpleNamespace(startOffset=start, length=length, changedArea=inside)


class CallSession:
    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("idempotent", None)
        kwargs.pop("what", None)
        try:
            return fn(*args, **kwargs)
        except VSphereError:
            raise
        except Exception as exc:
            raise VSphereError(f"{type(exc).__name__}") from None


def test_paging_until_capacity_and_merging() -> None:
    areas = [(0, 4096), (4096, 4096), (1 << 20, 65536), ((3 << 20) - 512, 512)]
    vm = FakeVM(areas, page=1 << 20)
    got = query_changed_areas(CallSession(), vm, None, 2000, CID.format(1), 3 << 20)  # type: ignore[arg-type]
    assert got == [(0, 8192), (1 << 20, 65536), ((3 << 20) - 512, 512)]
    assert vm.calls == [0, 1 << 20, 2 << 20]


def test_query_faults_are_typed() -> None:
    vm = FakeVM([], page=1 << 20, fault=RuntimeError("FileFault"))
    with pytest.raises(ChangeTrackingError):
        query_changed_areas(CallSession(), vm, None, 2000, CID.format(1), 1 << 20)  # type: ignore[arg-type]


def test_areas_outside_disk_or_no_progress_rejected() -> None:
    vm = FakeVM([(1 << 20, 4096)], page=2 << 20)
    with pytest.raises(ChangeTrackingError, match="outside"):
        query_changed_areas(CallSession(), vm, None, 1, "*", 1 << 20)  # type: ignore[arg-type]
    stuck = FakeVM([], page=0)
    with pytest.raises(ChangeTrackingError, match="progress"):
        query_changed_areas(CallSession(), stuck, None, 1, "*", 1 << 20)  # type: ignore[arg-type]


# --- VMware's rules for changeId="*", periodic scans, origins (pure) ---------------------------

EPOCH = CID.format(1).rsplit("/", 1)[0]


@pytest.mark.parametrize(
    ("ds_type", "origin", "rule"),
    [
        ("VMFS", CbtOrigin("vmkeep", False, EPOCH), "trust"),
        ("vmfs", CbtOrigin("vmkeep", False, EPOCH), "trust"),
        ("VMFS", CbtOrigin("vmkeep", True, EPOCH), "no"),  # snapshots at enable (KB 1020128)
        ("VMFS", CbtOrigin("other", None, EPOCH), "verify"),
        ("VMFS", None, "verify"),
        ("NFS", CbtOrigin("vmkeep", False, EPOCH), "no"),
        ("NFS41", None, "no"),
        ("vsan", CbtOrigin("vmkeep", False, EPOCH), "no"),
        ("VVOL", None, "no"),
        (None, CbtOrigin("vmkeep", False, EPOCH), "no"),
    ],
)
def test_star_rule(ds_type: str | None, origin: CbtOrigin | None, rule: str) -> None:
    got, reason = star_rule(ds_type, origin)
    assert got == rule and reason


def test_origin_follows_the_epoch() -> None:
    enabled = CbtStatus(True, True, "enabled by vmkeep", True, False)
    mine = origin_of(CID.format(1), None, enabled)
    assert mine == CbtOrigin("vmkeep", False, EPOCH)
    already = CbtStatus(True, True, "already enabled")
    assert origin_of(CID.format(9), mine, already) == mine  # same epoch: still vmkeep's
    other = origin_of("00 11-22 33/4", mine, already)  # reset by someone else
    assert other.by == "other" and other.snapshots_at_enable is None
    assert CbtOrigin.from_json(mine.to_json()) == mine
    assert CbtOrigin.from_json({"by": "bogus"}) is None and CbtOrigin.from_json(None) is None


def test_periodic_scan_every_nth_incremental() -> None:
    assert not periodic_scan_due(replace(BASE, incrementals=28), 30)
    assert periodic_scan_due(replace(BASE, incrementals=29), 30)
    assert not periodic_scan_due(replace(BASE, incrementals=500), 0)
    assert not periodic_scan_due(None, 1)


def test_hardware_version() -> None:
    assert hardware_version("vmx-04") == 4 and hardware_version("vmx-19") == 19
    assert hardware_version(None) is None and hardware_version("x") is None
