"""Faults at each step never leave a vmkeep snapshot behind, and never touch anyone else's;
quiesce policies; session expiry mid-disk; kill -9 then sweep; the canary password never shows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.vmbackup.vmbackup_helpers import (
    all_snapshots,
    lab_session,
    restored_hash,
    sha,
    vmkeep_snapshots,
)
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import inventory
from vmkeep.vsphere.errors import QuiesceFailed, SnapshotFailed, VSphereError
from vmkeep.vsphere.waiter import wait_for_task

pytestmark = pytest.mark.lab
VM = "small02"


@pytest.fixture
def user_snapshot(lab: Any) -> Any:
    """An administrator's own snapshot on another VM: vmkeep must never touch it."""
    with lab_session(lab) as s:
        vm = next(v for v in inventory.list_vms(s) if v.name == "small03")
        wait_for_task(s, vm.ref.CreateSnapshot_Task("admin-before-patch", "by hand", False, False))
    yield "admin-before-patch"
    with lab_session(lab) as s:
        vm = next(v for v in inventory.list_vms(s) if v.name == "small03")
        from vmkeep.vsphere.snapshots import snapshots_of

        for node in snapshots_of(s, vm.ref):
            if node.name == "admin-before-patch":
                wait_for_task(s, node.snapshot.RemoveSnapshot_Task(False))


@pytest.mark.parametrize(
    ("fault", "kwargs", "error"),
    [
        ("snapshot_create", {}, SnapshotFailed),
        ("quiesce_fail", {}, QuiesceFailed),
        ("ds_drop", {"count": 0, "nbytes": 1000}, VSphereError),
        ("remove_snapshot", {"count": 1}, None),  # a release failing once is retried
    ],
)
def test_faults_leave_no_vmkeep_snapshot(lab: Any, vc_env: dict[str, Any], repo: str,
                                         user_snapshot: str, fault: str, kwargs: dict[str, Any],
                                         error: type[Exception] | None) -> None:
    with lab.fault(fault, VM if fault != "ds_drop" else None, **kwargs):
        if error is None:
            assert run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)["snapshot_removed"]
        else:
            with pytest.raises(error):
                run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    assert vmkeep_snapshots(lab) == []
    assert user_snapshot in all_snapshots(lab).get("small03", [])
    if error is not None:
        assert Repository.open(repo).list_points() == []  # nothing half-committed


def test_quiesce_policy_crash_consistent(lab: Any, vc_env: dict[str, Any], repo: str) -> None:
    with lab.fault("quiesce_fail", VM):
        summary = run_flow(backup_vm, False, repo=repo, vm=VM, quiesce_policy="crash-consistent",
                           **vc_env)
    assert summary["consistency"] == "crash"
    assert any("quiesc" in w for w in summary["warnings"])
    point = Repository.open(repo).load_point(summary["id"])
    assert point.meta["consistency"] == "crash" and point.meta["warnings"]
    ok = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    # a quiesced Linux guest without a pre-freeze script: file-system consistency only
    assert ok["consistency"] == "filesystem" and "linux" in ok["consistency_reason"]


def test_session_expiry_mid_disk_is_survived(lab: Any, vc_env: dict[str, Any], repo: str,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """Every session expires right before the disk's second data read: mid-disk by state, not by
    a timer that a fast machine outruns (the backup done) or a slow one misses (not started)."""
    from vmkeep.vsphere.httpclient import HTTPClient

    expected = sha(lab.read_disk(VM, 0))
    real_get_range = HTTPClient.get_range
    data_reads, expired, lock = [0], threading.Event(), threading.Lock()

    def get_range(self: Any, url: str, offset: int, length: int, *args: Any, **kw: Any) -> Any:
        with lock:
            if length >= 64 * 1024 and not expired.is_set():
                data_reads[0] += 1
                if data_reads[0] == 2:
                    lab.client.expire_sessions()
                    expired.set()
        return real_get_range(self, url, offset, length, *args, **kw)

    monkeypatch.setattr(HTTPClient, "get_range", get_range)
    summary = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    assert expired.is_set()  # the expiry did happen mid-disk
    assert summary["snapshot_removed"]
    assert restored_hash(repo, summary["id"], 0, tmp_path) == expected


def vmkeep_cli(*args: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "tests.support.run_cli", *args]


def test_kill_9_then_sweep_removes_only_the_leftover(
    lab: Any, vc_env: dict[str, Any], repo: str, user_snapshot: str, tmp_path: Path
) -> None:
    # parked by a crash point once its first disk's index is stored: the snapshot is held there
    # (it is released after the last disk), on any machine, fast or loaded
    marker = tmp_path / "parked"
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=repo,
               VMKEEP_TEST_CRASH_AT="index:1", VMKEEP_TEST_CRASH_MARKER=str(marker))
    conn = ["--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"]]
    log = tmp_path / "backup.log"
    lab.write(VM, 25, seed=77)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            vmkeep_cli("backup", "vm", VM, *conn, "-v", env=env), env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 900  # waits for a state; only stops a hang
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
        assert marker.exists(), f"not parked; the backup said: {log.read_text()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(vmkeep_snapshots(lab)) == 1  # leaked, as after a real crash
    result = subprocess.run(
        vmkeep_cli("sweep", *conn, "--older-than", "0", "--json", env=env),
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["removed"]) == 1
    assert vmkeep_snapshots(lab) == []
    assert user_snapshot in all_snapshots(lab).get("small03", [])
    assert Repository.open(repo).list_points() == []


def test_cli_json_and_the_password_never_shows(lab: Any, vc_env: dict[str, Any], repo: str,
                                                tmp_path: Path) -> None:
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=repo)
    conn = ["--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"]]
    ok = subprocess.run(vmkeep_cli("backup", "vm", VM, *conn, "--json", "-vv", env=env),
                        env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert {"id", "vm", "disks", "snapshot_removed", "warnings"} <= set(summary)
    assert {"key", "mode", "bytes_read", "bytes_new"} <= set(summary["disks"][0])
    assert lab.password not in ok.stdout + ok.stderr
    manifests = Path(repo, "manifests")
    assert all(lab.password.encode() not in p.read_bytes() for p in manifests.iterdir())

    canary = "CANARY-Pw-93d1c0"
    bad = subprocess.run(vmkeep_cli("backup", "vm", VM, *conn, "-vv", env=env),
                         env=dict(env, VMKEEP_VC_PASSWORD=canary), capture_output=True, text=True)
    assert bad.returncode == 16
    assert canary not in bad.stdout + bad.stderr and "Traceback" not in bad.stderr

    insecure_default = subprocess.run(
        vmkeep_cli("backup", "vm", VM, "--vcenter", vc_env["vcenter"], env=env),
        env=env, capture_output=True, text=True,
    )
    assert insecure_default.returncode == 16  # TLS is verified by default, localhost included
    assert "TLS" in insecure_default.stderr


def test_thumbprint_pinning(lab: Any, vc_env: dict[str, Any], repo: str) -> None:
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=repo)
    pinned = subprocess.run(
        vmkeep_cli("backup", "vm", VM, "--vcenter", vc_env["vcenter"], "--thumbprint",
                   lab.thumbprint, "--json", env=env),
        env=env, capture_output=True, text=True,
    )
    assert pinned.returncode == 0, pinned.stderr
    wrong = "AB:" * 31 + "AB"
    refused = subprocess.run(
        vmkeep_cli("backup", "vm", VM, "--vcenter", vc_env["vcenter"], "--thumbprint", wrong,
                   env=env),
        env=env, capture_output=True, text=True,
    )
    assert refused.returncode == 16 and "Traceback" not in refused.stderr


def test_a_snapshot_left_behind_is_named_with_the_sweep_time(lab: Any, vc_env: dict[str, Any],
                                                              repo: str) -> None:
    """The release fails for good: the restore point is committed, and the summary, the run log
    and a report name the snapshot and when the sweep removes it (issue 19 item 5)."""
    from datetime import timedelta

    from vmkeep.jobs import specs
    from vmkeep.jobs.backup_vm import backup_vm as job
    from vmkeep.runtime import LocalRuntime
    from vmkeep.vsphere.snapshots import sweep_snapshots

    rt = LocalRuntime(retry_delay_scale=0.0)
    with lab.fault("remove_snapshot", VM, count=0):
        summary = job(specs.build(specs.BackupVmSpec, dict(vc_env, repo=repo, vm=VM)), rt)
    left = vmkeep_snapshots(lab)
    try:
        assert len(left) == 1 and not summary["snapshot_removed"]
        assert left[0] in summary["snapshot_left"] and "sweep" in summary["snapshot_left"]
        assert "UTC" in summary["snapshot_left"]
        assert any(key == "vmkeep-snapshot-left" for key, _, _ in rt.reports)
        assert Repository.open(repo).list_points()[0].id == summary["id"]
    finally:
        with lab_session(lab) as s:
            sweep_snapshots(s, timedelta(0), set())
    assert vmkeep_snapshots(lab) == []
