"""plan_disk: the one place a VM disk's read plan is decided (pure paths, QueryChangedDiskAreas
answered by an in-memory VM), and the previous point's typed CBT record feeding it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.vsphere.test_vsphere_cbt import CID, CallSession, FakeVM
from vmkeep.storage.manifest import DiskInfo as PointDisk
from vmkeep.storage.read_plan import BaseRef, CbtOrigin, DiskCbtState, ReadPlan
from vmkeep.vsphere.cbt import DiskState, plan_disk
from vmkeep.vsphere.inventory import VirtualDisk

GiB = 1 << 30
EPOCH = CID.format(1).rsplit("/", 1)[0]
BASE = BaseRef("ab" * 32, 0)


def disk(change: int | None = 5, *, thin: bool = False, capacity: int = GiB) -> VirtualDisk:
    return VirtualDisk(
        2000, "Hard disk 1", capacity, "[ds1] vm/vm-000001.vmdk", "ds1", thin, "persistent",
        None if change is None else CID.format(change), 1000, 0, "uuid-1",
    )


def prev(incrementals: int = 0) -> DiskState:
    return DiskState(CID.format(4), GiB, "[ds1] vm/vm.vmdk", True, "uuid-1", incrementals,
                     None, BASE)


def plan(current: VirtualDisk, before: DiskState | None, vm: FakeVM | None = None, **kw: Any
         ) -> ReadPlan:
    kw.setdefault("vm_cbt_enabled", True)
    return plan_disk(CallSession(), vm or FakeVM([(4096, 512)], page=GiB), "snap", current,  # type: ignore[arg-type]
                     before, **kw)


def test_cbt_incremental_plan_carries_everything_the_data_path_needs() -> None:
    got = plan(disk(), prev(2))
    assert got.mode == "cbt" and got.extents == ((4096, 512),)
    assert got.base == BASE and got.change_id == CID.format(5)
    assert got.audit == "previous point" and got.changed_bytes == 512
    assert got.disk_key == 2000 and got.transport is None  # the opener fills it in


def test_first_backup_of_a_thin_disk_reads_allocated_areas_per_star_rule() -> None:
    got = plan(disk(thin=True), None, origin=CbtOrigin("other", None, EPOCH))
    assert got.mode == "full" and got.base is None and got.extents == ((4096, 512),)
    assert got.star == "verify" and got.audit == "zeros"
    trusted = plan(disk(thin=True), None, origin=CbtOrigin("vmkeep", False, EPOCH))
    assert trusted.star == "trust" and trusted.audit is None
    nfs = plan(disk(thin=True), None, datastore_type="NFS")
    assert nfs.extents is None and nfs.star == "no" and "whole disk read" in nfs.reason


def test_new_disk_since_the_previous_point_is_full_and_says_so() -> None:
    got = plan(disk(), None, new_disk=True)
    assert got.mode == "full" and got.reason == "new disk since the previous restore point"


def test_template_is_read_without_a_snapshot() -> None:
    first = plan_disk(CallSession(), FakeVM([], GiB), None, disk(), None, vm_cbt_enabled=True)  # type: ignore[arg-type]
    again = plan_disk(CallSession(), FakeVM([], GiB), None, disk(), prev(), vm_cbt_enabled=True)  # type: ignore[arg-type]
    assert (first.mode, again.mode) == ("full", "scan")
    assert again.base == BASE and "template" in again.reason


def test_periodic_scan_and_audit_reread_override_cbt() -> None:
    vm = FakeVM([(0, 512)], page=GiB)
    periodic = plan(disk(), prev(3), vm, scan_every=4)
    assert periodic.mode == "scan" and "periodic scan after 3" in periodic.reason
    assert vm.calls == []  # not even asked
    reread = plan(disk(), prev(), reread="CBT audit mismatch: whole disk re-read")
    assert reread.mode == "scan" and reread.extents is None and reread.audit is None
    assert reread.reason == "CBT audit mismatch: whole disk re-read"
    first = plan(disk(), None, reread="CBT audit mismatch: whole disk re-read")
    assert first.mode == "full" and first.extents is None


def test_cbt_unavailable_and_query_failure_scan_with_reason() -> None:
    off = plan(disk(None), prev(), vm_cbt_enabled=False,
               cbt_off_reason="CBT needs virtual hardware 7 or later (this VM has vmx-04)")
    assert off.mode == "scan" and "vmx-04" in off.reason
    failing = FakeVM([], GiB, fault=RuntimeError("FileFault"))
    failed = plan(disk(), prev(), failing)
    assert failed.mode == "scan" and failed.reason.startswith("CBT query failed")


def _point_disk(extra: dict[str, object], mode: str = "cbt") -> PointDisk:
    return PointDisk(0, "Hard disk 1", GiB, 1 << 20, mode, "", extra)


def test_previous_state_from_a_version_1_point_feeds_an_incremental() -> None:
    """A version-1 VM point has the identity keys but no cbt/cbt_audit/cbt_suspect."""
    v1 = _point_disk({"key": 2000, "capacity": GiB, "file_base": "[ds1] vm/vm.vmdk",
                      "change_id": CID.format(4), "cbt_enabled": True, "uuid": "uuid-1"}, "full")
    state = DiskCbtState.of_disk(v1)
    assert state.incrementals == 0 and state.origin is None and state.audit is None
    assert state.changed_ranges == () and not state.suspect and state.transport is None
    got = plan(disk(), DiskState.recorded(state, v1.size, BASE))
    assert got.mode == "cbt" and got.base == BASE


def test_a_malformed_record_is_never_trusted() -> None:
    forged = _point_disk({"change_id": 42, "cbt_enabled": "yes", "capacity": "big",
                          "cbt": {"incrementals": "7", "changed_ranges": [[1, "x"], [2, 3]],
                                  "origin": {"by": "nobody"}, "star": "maybe"},
                          "cbt_suspect": 1, "transport": {"version": 9}})
    state = DiskCbtState.of_disk(forged)
    assert state.change_id is None and state.cbt_enabled is False and state.capacity == GiB
    assert state.incrementals == 0 and state.changed_ranges == ((2, 3),)
    assert state.origin is None and state.star is None and state.suspect is False
    got = plan(disk(), DiskState.recorded(state, GiB, BASE))
    assert got.mode == "scan"  # CBT was "off" at the previous backup: never an incremental


@pytest.mark.parametrize("incrementals", [0, 5])
def test_recorded_state_round_trips(incrementals: int) -> None:
    state = DiskCbtState(
        CID.format(9), True, GiB, "[ds1] vm/vm.vmdk", "uuid-1", "cbt",
        CbtOrigin("vmkeep", False, EPOCH), incrementals, ((3, 5), (9, 10)), 8192, None,
        {"result": "ok", "chunks_sampled": 4}, False, None,
    )
    back = DiskCbtState.of_disk(_point_disk(state.to_extra()))
    assert back == state and back.audit_result == "ok"
