"""VMs on vSAN and vVol datastores back up through NFC export leases (``--transport auto``):
full then incremental, each restore bit-identical to the lab's view of the disk at backup
time; the lease is completed (progress reported) on success and aborted on failure, a lease
that ends mid-stream leaves no restore point, and asking for ``https`` names the fix."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env
from tests.vmbackup.vmbackup_helpers import restored_hash, sha, vmkeep_snapshots
from vmkeep.disks.vmdk.stream_optimized import StreamFormatError
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository
from vmkeep.vsphere.errors import NfcLeaseError, ObjectBackedDisk

pytestmark = pytest.mark.lab


def _leases(lab: Any, vm: str) -> list[dict[str, Any]]:
    return [le for le in lab.client.nfc_leases() if le["vm"] == vm]


@pytest.mark.parametrize(("vm", "ds_type"), [("vsan01", "vsan"), ("vvol01", "VVOL")])
def test_object_datastore_vm_backs_up_full_and_incremental_through_nfc(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path, vm: str, ds_type: str
) -> None:
    before = len(_leases(lab, vm))
    lab.write(vm, 3, seed=71)
    at_first = sha(lab.read_disk(vm, 0))
    first = run_flow(backup_vm, False, repo=repo, vm=vm, enable_cbt=True, **vc_env)
    assert first["snapshot_removed"]
    lab.write(vm, 1, seed=72)
    at_second = sha(lab.read_disk(vm, 0))
    second = run_flow(backup_vm, False, repo=repo, vm=vm, **vc_env)
    lab.write(vm, 1, seed=73)  # later writes must not leak into the restore points

    assert restored_hash(repo, first["id"], 0, tmp_path) == at_first
    assert restored_hash(repo, second["id"], 0, tmp_path) == at_second
    repo_obj = Repository.open(repo)
    for run in (first, second):
        point = repo_obj.load_point(run["id"])
        transport = point.disks[0].extra["transport"]
        assert transport["version"] == 1 and transport["name"] == "nfc", transport
        assert ds_type in transport["reason"]
    p1 = repo_obj.load_point(first["id"]).disks[0]
    p2 = repo_obj.load_point(second["id"]).disks[0]
    assert p2.mode == "cbt", p2.mode  # CBT still says what changed: only that is inflated
    assert p2.extra["cbt_audit"] == {"result": "not applicable", "reason": "cbt nfc read"}
    # the incremental stores only what changed (1 % of the disk): everything else dedupes
    assert p2.extra["bytes_new"] < p1.extra["bytes_new"], (p1.extra, p2.extra)
    leases = _leases(lab, vm)[before:]
    assert len(leases) == 2
    assert all(le["outcome"] == "done" and le["state"] == "done" for le in leases), leases
    assert all(le["progress_calls"] >= 1 for le in leases), leases
    assert vmkeep_snapshots(lab) == []


@pytest.mark.parametrize("kind", ["nfc_abort", "nfc_timeout"])
def test_lease_ending_mid_stream_is_a_typed_error_and_commits_nothing(
    lab: Any, vc_env: dict[str, Any], repo: str, kind: str
) -> None:
    with lab.fault(kind, "vsan01", count=0, bytes=100_000), pytest.raises(NfcLeaseError) as err:
        run_flow(backup_vm, False, repo=repo, vm="vsan01", enable_cbt=False, **vc_env)
    assert ("timed out" in str(err.value)) == (kind == "nfc_timeout"), str(err.value)
    assert Repository.open(repo).list_points() == []
    assert vmkeep_snapshots(lab) == []
    last = _leases(lab, "vsan01")
    assert last and last[-1]["state"] == "error"


def test_hostile_stream_is_a_typed_error_and_commits_nothing(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    with lab.fault("nfc_corrupt", "vvol01", count=0), pytest.raises(StreamFormatError) as err:
        run_flow(backup_vm, False, repo=repo, vm="vvol01", enable_cbt=False, **vc_env)
    assert err.value.exit_code == 14 and "not a grain of the disk" in str(err.value)
    assert Repository.open(repo).list_points() == []
    assert vmkeep_snapshots(lab) == []
    assert _leases(lab, "vvol01")[-1]["outcome"] == "aborted"


def test_https_on_a_vsan_disk_names_the_nfc_transport(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    with pytest.raises(ObjectBackedDisk) as err:
        run_flow(backup_vm, False, repo=repo, vm="vsan01", transport="https", enable_cbt=False,
                 **vc_env)
    assert err.value.exit_code == 16 and "--transport nfc" in str(err.value)
    assert "vsan" in str(err.value)
    assert Repository.open(repo).list_points() == []
    assert vmkeep_snapshots(lab) == []


def test_restore_equals_lab_export_disk(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    """The oracle from outside: ``vmkeep lab export-disk`` of the vSAN disk, unchanged since."""
    run = run_flow(backup_vm, False, repo=repo, vm="vsan01", enable_cbt=False, **vc_env)
    out = tmp_path / "export.raw"
    env = dict(os.environ, VMKEEP_LAB_DIR=str(lab.state_dir))
    done = subprocess.run([*VMKEEP, "lab", "export-disk", "vsan01", "--disk", "0", "--to",
                           str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert restored_hash(repo, run["id"], 0, tmp_path) == sha(out.read_bytes())


def test_nfc_reads_a_vmfs_disk_too(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    at = sha(lab.read_disk("db01", 0))
    run = run_flow(backup_vm, False, repo=repo, vm="db01", transport="nfc", enable_cbt=False,
                   **vc_env)
    assert restored_hash(repo, run["id"], 0, tmp_path) == at
    point = Repository.open(repo).load_point(run["id"])
    assert point.disks[0].extra["transport"]["name"] == "nfc"
    assert point.disks[0].extra["transport"]["reason"] == "--transport nfc"


def test_auto_falls_back_to_nfc_when_folder_access_is_refused(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    at = sha(lab.read_disk("db01", 0))
    with lab.fault("ds_drop", "db01/db01.vmdk", count=0, bytes=0):
        run = run_flow(backup_vm, False, repo=repo, vm="db01", enable_cbt=False, **vc_env)
    assert restored_hash(repo, run["id"], 0, tmp_path) == at
    point = Repository.open(repo).load_point(run["id"])
    transport = point.disks[0].extra["transport"]
    assert transport["name"] == "nfc" and "/folder access refused" in transport["reason"]
    assert any("read through NFC instead" in w for w in point.meta["warnings"])


def test_cli_refusal_is_a_clean_exit_and_auto_reports_the_transport(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    env = cli_env(PREFECT_API_URL="", VMKEEP_REPO=repo)
    conn = ["--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"], "--no-enable-cbt"]
    refused = subprocess.run([*VMKEEP, "backup", "vm", "vvol01", *conn, "--transport", "https",
                              "--no-prefect"], env=env, capture_output=True, text=True)
    assert refused.returncode == 16, refused.stderr
    assert "--transport nfc" in refused.stderr and "Traceback" not in refused.stderr
    ok = subprocess.run([*VMKEEP, "backup", "vm", "vvol01", *conn, "--json", "--no-prefect"],
                        env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    [disk] = json.loads(ok.stdout)["disks"]
    assert disk["transport"] == "nfc"  # the run report names it; the point records why


def test_staged_backup_through_nfc(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    before = len(_leases(lab, "vsan01"))
    lab.write("vsan01", 1, seed=75)
    at = sha(lab.read_disk("vsan01", 0))
    run = run_flow(backup_vm, False, repo=repo, vm="vsan01", stage_dir=str(tmp_path / "stage"),
                   **vc_env)
    assert restored_hash(repo, run["id"], 0, tmp_path) == at
    [lease] = _leases(lab, "vsan01")[before:]
    assert lease["outcome"] == "done"  # the stream was read to its end before the release


def test_two_disks_share_one_lease_completed_after_both(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    before = len(_leases(lab, "linux01"))
    at = [sha(lab.read_disk("linux01", i)) for i in (0, 1)]
    run = run_flow(backup_vm, False, repo=repo, vm="linux01", transport="nfc", enable_cbt=False,
                   **vc_env)
    assert [restored_hash(repo, run["id"], i, tmp_path) for i in (0, 1)] == at
    [lease] = _leases(lab, "linux01")[before:]
    assert lease["outcome"] == "done" and lease["progress"] == 100
