"""Linux and Windows guests, full then CBT incremental, every disk restored bit-identically;
independent disks skipped; templates read without a snapshot (when named exactly); vMotion
keeps the chain, storage vMotion scans."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.restore.restore_helpers import run_cli
from tests.vmbackup.vmbackup_helpers import relocate, restored_hash, sha, vm_host, vmkeep_snapshots
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("vm", ["linux01", "win01"])
def test_guest_full_then_cbt(lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path,
                             vm: str) -> None:
    ndisks = len(lab.vm(vm)["disks"])
    first = run_flow(backup_vm, False, repo=repo, vm=vm, enable_cbt=True, **vc_env)
    state1 = [sha(lab.read_disk(vm, d)) for d in range(ndisks)]
    # a file written through the guest's file system (blind block writes would damage it for
    # the tests that transfer files into these guests later)
    path = "C:\\vmkeep-cbt.bin" if vm.startswith("win") else "/vmkeep-cbt.bin"
    lab.put_file(vm, path, random.Random(21).randbytes(768 * 1024))
    second = run_flow(backup_vm, False, repo=repo, vm=vm, **vc_env)
    state2 = [sha(lab.read_disk(vm, d)) for d in range(ndisks)]
    assert [d["mode"] for d in second["disks"]] == ["cbt"] * ndisks, second["disks"]
    # the unchanged disk of linux01 reads nothing at all
    if ndisks > 1:
        assert second["disks"][1]["bytes_read"] == 0
    for d in range(ndisks):
        assert restored_hash(repo, first["id"], d, tmp_path) == state1[d]
        assert restored_hash(repo, second["id"], d, tmp_path) == state2[d]
    point = Repository.open(repo).load_point(second["id"])
    assert point.meta["guest_id"] == lab.vm(vm).get("guest_id", point.meta["guest_id"])
    assert vmkeep_snapshots(lab) == []


def test_independent_disk_is_skipped_with_a_warning(vc_env: dict[str, Any], repo: str) -> None:
    summary = run_flow(backup_vm, False, repo=repo, vm="db01", **vc_env)
    assert len(summary["disks"]) == 1
    assert any("independent" in w for w in summary["warnings"])


def test_template_is_backed_up_without_a_snapshot(lab: Any, vc_env: dict[str, Any], repo: str,
                                                  tmp_path: Path) -> None:
    first = run_flow(backup_vm, False, repo=repo, vm="tmpl-linux", **vc_env)
    assert first["disks"][0]["mode"] == "full" and first["consistency"] is None
    assert any("template" in w for w in first["warnings"])
    assert restored_hash(repo, first["id"], 0, tmp_path) == sha(lab.read_disk("tmpl-linux", 0))
    again = run_flow(backup_vm, False, repo=repo, vm="tmpl-linux", **vc_env)
    assert again["disks"][0]["mode"] == "scan" and again["disks"][0]["bytes_new"] == 0
    assert vmkeep_snapshots(lab) == []


def test_a_template_is_backed_up_when_named_beside_other_vms_and_said_so(
    vc_env: dict[str, Any], repo: str
) -> None:
    """Named exactly it is asked for, alone or with others (it was "not found" beside
    others); a pattern never takes it in, and says so when it matches nothing else; the
    summary line says it was read without a snapshot (it said "None-consistent … snapshot NOT
    released")."""
    vc = ("--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"])
    code, _out, err = run_cli("backup", "vm", "tmpl-linux", "small03", *vc, repo=repo)
    assert code == 0, err
    assert "tmpl-linux: restore point" in err and "(template, read without a snapshot)" in err
    assert "None-consistent" not in err and "NOT released" not in err
    code, _out, err = run_cli("backup", "vm", "tmpl-*", *vc, repo=repo)
    assert code == 14 and "Traceback" not in err, err
    assert "templates are backed up only when named exactly: tmpl-linux" in " ".join(err.split())


def test_vmotion_keeps_the_chain_and_storage_vmotion_forces_a_scan(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    vm = "small02"
    home = vm_host(lab, vm)
    run_flow(backup_vm, False, repo=repo, vm=vm, enable_cbt=True, **vc_env)
    other = next(h for h in lab.hosts if (h["name"] if isinstance(h, dict) else h) != home)
    other_name = other["name"] if isinstance(other, dict) else other
    relocate(lab, vm, host=other_name)
    try:
        lab.write(vm, 1, seed=5)
        moved = run_flow(backup_vm, False, repo=repo, vm=vm, **vc_env)
        assert moved["disks"][0]["mode"] == "cbt", moved["disks"]
        assert Repository.open(repo).load_point(moved["id"]).meta["host"] == other_name
        relocate(lab, vm, datastore="datastore2")
        after = sha(lab.read_disk(vm, 0))
        scanned = run_flow(backup_vm, False, repo=repo, vm=vm, **vc_env)
        assert scanned["disks"][0]["mode"] == "scan", scanned["disks"]
        assert scanned["disks"][0]["reason"]
        assert restored_hash(repo, scanned["id"], 0, tmp_path) == after
    finally:
        relocate(lab, vm, host=home, datastore="datastore1")
