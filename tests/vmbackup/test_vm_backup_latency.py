"""Storage latency control on the lab (Veeam's: no new task on a datastore above 20 ms): the lab's
performance manager reports datastore latency per host (``ds_latency`` sets it); a VM whose
datastore is busy waits before its snapshot — looking again every poll — and is backed up once
the latency falls, or after the longest wait anyway, with a warning.  The waits go through
``datastore_latency.pause``, replaced here: no test waits for the wall clock."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.vsphere import datastore_latency
from vmkeep.vsphere.datastore_latency import busy, describe

pytestmark = pytest.mark.lab
VM = "legacy01"  # on datastore2 (VMFS5), 16 MiB ext4; its home is there too
DATASTORE = "datastore2"


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(datastore_latency, "pause", waits.append)
    return waits


def test_a_vm_on_a_busy_datastore_waits_until_it_recovers(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    waits: list[float] = []

    def recover(seconds: float) -> None:  # the datastore calms down during the first wait
        waits.append(seconds)
        lab.client.clear_faults("ds_latency")

    monkeypatch.setattr(datastore_latency, "pause", recover)
    lab.client.add_fault("ds_latency", DATASTORE, count=0, bytes=45)
    try:
        summary = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    finally:
        lab.client.clear_faults("ds_latency")
    assert waits == [30.0]
    assert summary["snapshot_removed"] and not [
        w for w in summary["warnings"] if "latency" in w]


def test_after_the_longest_wait_the_vm_is_backed_up_anyway_with_a_warning(
    lab: Any, vc_env: dict[str, Any], repo: str, pauses: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    monkeypatch.setenv("VMKEEP_DATASTORE_LATENCY_WAIT_S", "75")
    with lab.fault("ds_latency", DATASTORE, count=0, bytes=45):
        summary = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    assert pauses == [30.0, 30.0, 15.0]
    [warning] = [w for w in summary["warnings"] if "latency" in w]
    assert warning == (f"datastore latency {DATASTORE} (45 ms) at or above 20 ms "
                       "(VMKEEP_DATASTORE_LATENCY_STOP_MS) after waiting 75 s: backed up anyway")
    assert summary["id"] and summary["snapshot_removed"]


def test_a_calm_datastore_or_the_control_switched_off_never_waits(
    lab: Any, vc_env: dict[str, Any], repo: str, pauses: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)  # the lab's 2 ms
    monkeypatch.setenv("VMKEEP_DATASTORE_LATENCY_STOP_MS", "0")
    with lab.fault("ds_latency", DATASTORE, count=0, bytes=500):
        run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    assert pauses == []


def test_busy_is_at_or_above_the_limit() -> None:
    slow = busy({"ds2": 20, "ds1": 45, "ds3": 19}, 20)
    assert slow == {"ds1": 45, "ds2": 20}
    assert describe(slow) == "ds1 (45 ms), ds2 (20 ms)"


def test_reads_are_slowed_while_the_datastore_answers_above_the_throttle(
    lab: Any, vc_env: dict[str, Any], repo: str, pauses: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Veeam's second limit ("throttle I/O of existing tasks at 30 ms"): a datastore at 45 ms,
    below the 50 ms at which no snapshot starts here, is read from at the floor rate; the run
    says so.  A calm datastore is read at full speed, with nothing recorded."""
    from vmkeep.storage import rate_limit

    booked: list[int] = []
    take = rate_limit.AdaptivePacer.take

    def counting(self: rate_limit.AdaptivePacer, n: int) -> None:
        if self.rate is not None:
            booked.append(n)
        take(self, n)

    monkeypatch.setattr(rate_limit.AdaptivePacer, "take", counting)
    remove_all_snapshots(find_vm(lab.connect(), VM))
    monkeypatch.setenv("VMKEEP_DATASTORE_LATENCY_STOP_MS", "50")
    calm = run_flow(backup_vm, False, repo=repo, vm=VM, read_whole=True, **vc_env)
    assert calm["latency_throttle"] is None and booked == []
    monkeypatch.setenv("VMKEEP_DATASTORE_LATENCY_FLOOR_KIB", "65536")  # 64 MiB/s: a short test
    with lab.fault("ds_latency", DATASTORE, count=0, bytes=45):
        summary = run_flow(backup_vm, False, repo=repo, vm=VM, read_whole=True, **vc_env)
    assert pauses == []  # 45 ms is below the 50 ms stop: no wait before the snapshot
    throttle = summary["latency_throttle"]
    assert throttle["throttle_ms"] == 30 and throttle["slow_looks"] >= 1
    assert throttle["lowest_kib_s"] == 65536 and throttle["peak_ms"] == {DATASTORE: 45}
    assert sum(booked) == sum(d["bytes_read"] for d in summary["disks"]) > 0
    [warning] = [w for w in summary["warnings"] if "reads slowed" in w]
    assert f"{DATASTORE} (45 ms) answered at or above 30 ms" in warning
