"""CBT on by default, VMware's rules for "*", the CBT truth audit against the lab's ``cbt_lie``,
periodic scans, and consistency labels — end to end through the backup-vm flow."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env
from tests.vmbackup.vmbackup_helpers import restored_hash, sha
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
VM = "cbt01"  # 32 MiB thin, used by no other backup test
CHUNK = 256 * 1024


def _disk(repo: str, point_id: str) -> dict[str, Any]:
    return Repository.open(repo).load_point(point_id).disks[0].extra


def _neighbour_after(ranges: list[list[int]], nchunks: int) -> int:
    """A chunk right after one of the previous run's changed ranges, itself unchanged."""
    inside = {i for a, b in ranges for i in range(a, b)}
    for _, end in ranges:
        if end < nchunks and end not in inside:
            return end
    raise AssertionError(f"no free neighbour in {ranges}")


def _lie_next_to_last_changes(lab: Any, repo: str, point_id: str) -> int:
    """Write one 4 KiB block in the chunk after the last run's changes and make CBT omit it."""
    ranges = _disk(repo, point_id)["cbt"]["changed_ranges"]
    chunk = _neighbour_after(ranges, (32 << 20) // CHUNK)
    lab.write(VM, at=(chunk * CHUNK + 8192, 4096))
    lab.client.add_fault("cbt-lie", target=VM, count=1)
    return chunk


def test_cbt_default_audit_catches_a_lying_cbt(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    # 1. No CBT flag: vmkeep enables CBT (with its stun) and reads the allocated areas only.
    first = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    [d1] = first["disks"]
    assert d1["mode"] == "full" and "allocated areas" in d1["reason"], d1
    assert d1["bytes_read"] < d1["size"]
    origin = _disk(repo, first["id"])["cbt"]["origin"]
    assert origin["by"] == "vmkeep" and origin["snapshots_at_enable"] is False
    assert first["consistency"] == "filesystem"  # quiesced Linux, no pre-freeze script
    assert first["cbt_audit"]["status"] == "not applicable"
    assert restored_hash(repo, first["id"], 0, tmp_path) == sha(lab.read_disk(VM, 0))

    # 2. The second backup reads only the changed areas, audited.
    lab.write(VM, 1, seed=21)
    second = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    [d2] = second["disks"]
    assert d2["mode"] == "cbt", d2
    assert d2["bytes_read"] < d2["size"] / 5
    audit = second["cbt_audit"]
    assert audit["status"] == "ok" and audit["chunks_sampled"] >= 1 and audit["mismatches"] == 0
    assert 0 < audit["share_of_full_read"] <= 0.05 + 4 * CHUNK / (32 << 20)
    assert d2["cbt_audit"]["result"] == "ok" and not d2["cbt_suspect"]
    assert restored_hash(repo, second["id"], 0, tmp_path) == sha(lab.read_disk(VM, 0))

    # 3. CBT lies (omits a written area next to the last changes): the audit catches it, the
    #    disk is re-read whole in the same run and CBT is reset.
    #    Through the CLI: exit code 0, the distinct cbt_audit field and a warning in --json.
    _lie_next_to_last_changes(lab, repo, second["id"])
    env = cli_env(PREFECT_API_URL="", VMKEEP_REPO=repo)  # the test-only launcher: dev licence
    conn = ["--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"]]
    cli = subprocess.run(
        [*VMKEEP, "backup", "vm", VM, *conn, "--json", "--no-prefect"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    third = json.loads(cli.stdout)
    [d3] = third["disks"]
    assert third["cbt_audit"]["status"] == "mismatch", third["cbt_audit"]
    assert third["cbt_audit"]["cbt_reset"] and third["cbt_audit"]["suspect_disks"]
    assert d3["cbt_suspect"] and d3["mode"] == "scan" and d3["bytes_read"] == d3["size"]
    assert "CBT audit mismatch" in d3["reason"], d3
    assert d3["cbt_audit"]["mismatches"] >= 1
    assert any("cbt-suspect" in w for w in third["warnings"])
    assert restored_hash(repo, third["id"], 0, tmp_path) == sha(lab.read_disk(VM, 0))
    extra = _disk(repo, third["id"])
    assert extra["cbt_suspect"] and extra["cbt_audit"]["result"] == "mismatch"
    point = Repository.open(repo).load_point(third["id"])
    assert point.meta["cbt_audit"]["status"] == "mismatch"
    assert not lab.client.faults()  # the lie was consumed by this run
    listed = subprocess.run(
        [*VMKEEP, "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    points = json.loads(listed.stdout)["points"]
    assert [p["consistency"] for p in points] == ["filesystem"] * 3
    assert [p["cbt_suspect"] for p in points] == [[], [], [0]]

    # 4. After the reset, the next run is CBT again (the new epoch's change id was recorded).
    lab.write(VM, 1, seed=22)
    fourth = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    [d4] = fourth["disks"]
    assert d4["mode"] == "cbt" and fourth["cbt_audit"]["status"] == "ok", d4
    assert restored_hash(repo, fourth["id"], 0, tmp_path) == sha(lab.read_disk(VM, 0))

    # 5. The same lie with the audit off: the restore point is silently wrong ...
    _lie_next_to_last_changes(lab, repo, fourth["id"])
    blind = run_flow(backup_vm, False, repo=repo, vm=VM, cbt_audit="off", **vc_env)
    assert blind["disks"][0]["mode"] == "cbt" and blind["cbt_audit"]["status"] == "off"
    assert restored_hash(repo, blind["id"], 0, tmp_path) != sha(lab.read_disk(VM, 0))

    # 6. ... until the periodic scan (here every 3rd incremental) reads the whole disk again.
    healed = run_flow(backup_vm, False, repo=repo, vm=VM, scan_every=3, **vc_env)
    [d6] = healed["disks"]
    assert d6["mode"] == "scan" and "periodic scan" in d6["reason"], d6
    assert restored_hash(repo, healed["id"], 0, tmp_path) == sha(lab.read_disk(VM, 0))

    # 7. An administrator who distrusts CBT (a VMware CBT bug, KB 2090639) asks for an active
    #    full through the CLI: every disk read whole, only what differs stored.
    lab.write(VM, 1, seed=23)
    changed = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    lied = _lie_next_to_last_changes(lab, repo, changed["id"])
    blind = run_flow(backup_vm, False, repo=repo, vm=VM, cbt_audit="off", **vc_env)
    assert restored_hash(repo, blind["id"], 0, tmp_path) != sha(lab.read_disk(VM, 0))
    cli = subprocess.run(
        [*VMKEEP, "backup", "vm", VM, *conn, "--json", "--no-prefect", "--full",
         "--cbt-audit", "off"], env=env, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    [d7] = json.loads(cli.stdout)["disks"]
    assert d7["mode"] == "scan" and d7["reason"] == "an active full: read whole as asked", d7
    assert d7["bytes_read"] == d7["size"] and d7["bytes_new"] <= 2 * CHUNK, (lied, d7)
    full = json.loads(cli.stdout)["id"]
    assert restored_hash(repo, full, 0, tmp_path) == sha(lab.read_disk(VM, 0))


def test_unsupported_vm_is_backed_up_by_scan(lab: Any, vc_env: dict[str, Any], repo: str) -> None:
    first = run_flow(backup_vm, False, repo=repo, vm="old01", **vc_env)
    assert first["disks"][0]["mode"] == "full"
    assert any("hardware 7" in w for w in first["warnings"]), first["warnings"]
    second = run_flow(backup_vm, False, repo=repo, vm="old01", **vc_env)
    [d] = second["disks"]
    assert d["mode"] == "scan" and "hardware 7" in d["reason"], d


def test_star_is_not_trusted_on_nfs(lab: Any, vc_env: dict[str, Any], repo: str) -> None:
    first = run_flow(backup_vm, False, repo=repo, vm="nfs01", **vc_env)
    [d] = first["disks"]
    assert d["mode"] == "full" and "only valid on VMFS" in d["reason"], d
    assert d["bytes_read"] == d["size"]  # the whole disk, not NFS's one-extent "*"
    assert _disk(repo, first["id"])["cbt"]["star"] == "no"


def test_no_enable_cbt_opts_out(lab: Any, vc_env: dict[str, Any], repo: str) -> None:
    from pyVmomi import vim

    from tests.vmbackup.vmbackup_helpers import lab_session
    from vmkeep.vsphere import inventory
    from vmkeep.vsphere.waiter import wait_for_task

    with lab_session(lab) as s:  # whatever earlier tests did: CBT off on small06
        ref = next(v for v in inventory.list_vms(s) if v.name == "small06").ref
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=False)
        wait_for_task(s, ref.ReconfigVM_Task(spec))
    first = run_flow(backup_vm, False, repo=repo, vm="small06", enable_cbt=False, **vc_env)
    second = run_flow(backup_vm, False, repo=repo, vm="small06", enable_cbt=False, **vc_env)
    assert first["disks"][0]["mode"] == "full"
    [d] = second["disks"]
    assert d["mode"] == "scan" and "--no-enable-cbt" in d["reason"], d


def test_consistency_labels_follow_what_happened(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.vmbackup.vmbackup_helpers import lab_session
    from vmkeep.vsphere import inventory
    from vmkeep.vsphere.waiter import wait_for_task

    crash = run_flow(backup_vm, False, repo=repo, vm="small05", quiesce=False, **vc_env)
    assert crash["consistency"] == "crash"
    monkeypatch.setenv("VMKEEP_GUEST_USER", "root")
    monkeypatch.setenv("VMKEEP_GUEST_PASSWORD", "secret")
    hooked = run_flow(backup_vm, False, repo=repo, vm="small05", pre_freeze="/bin/sync", **vc_env)
    assert hooked["consistency"] == "application", hooked["consistency_reason"]
    listed = Repository.open(repo).list_points()
    assert [p.to_json()["consistency"] for p in listed] == ["crash", "application"]

    win = run_flow(backup_vm, False, repo=repo, vm="win01", **vc_env)
    assert win["consistency"] == "filesystem" and "EnableUUID" in win["consistency_reason"]
    from pyVmomi import vim

    with lab_session(lab) as s:  # VSS application writers need disk.EnableUUID = TRUE
        ref = next(v for v in inventory.list_vms(s) if v.name == "win01").ref
        opt = vim.option.OptionValue(key="disk.EnableUUID", value="TRUE")
        wait_for_task(s, ref.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=[opt])))
    try:
        vss = run_flow(backup_vm, False, repo=repo, vm="win01", **vc_env)
        assert vss["consistency"] == "application", vss["consistency_reason"]
    finally:
        with lab_session(lab) as s:
            ref = next(v for v in inventory.list_vms(s) if v.name == "win01").ref
            opt = vim.option.OptionValue(key="disk.EnableUUID", value="")
            wait_for_task(s, ref.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=[opt])))


def test_star_from_someone_elses_cbt_is_verified(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    """CBT enabled outside vmkeep while the VM had a snapshot: "*" is wrong (KB 1020128); the
    audit catches it, CBT is reset and the disk read whole; the next run is cbt."""
    from pyVmomi import vim

    from tests.vmbackup.vmbackup_helpers import lab_session
    from vmkeep.vsphere import inventory, snapshots
    from vmkeep.vsphere.waiter import wait_for_task

    vm = "db01"
    with lab_session(lab) as s:
        ref = next(v for v in inventory.list_vms(s) if v.name == vm).ref
        for on in (False, True):
            if on:  # an administrator's snapshot exists when "someone" enables CBT
                wait_for_task(s, ref.CreateSnapshot_Task("admin", "", False, False))
            spec = vim.vm.ConfigSpec(changeTrackingEnabled=on)
            wait_for_task(s, ref.ReconfigVM_Task(spec))
    try:
        first = run_flow(backup_vm, False, repo=repo, vm=vm, **vc_env)
        [d] = first["disks"]
        assert first["cbt_audit"]["status"] == "mismatch", first
        assert d["cbt_suspect"] and d["cbt_audit"]["expected"] == "zeros"
        assert d["mode"] == "full" and d["bytes_read"] == d["size"], d
        assert restored_hash(repo, first["id"], 0, tmp_path) == sha(lab.read_disk(vm, 0))
        origin = _disk(repo, first["id"])["cbt"]["origin"]
        assert origin["by"] == "vmkeep" and origin["snapshots_at_enable"] is True
        lab.write(vm, 1, seed=31)
        second = run_flow(backup_vm, False, repo=repo, vm=vm, **vc_env)
        assert second["disks"][0]["mode"] == "cbt" and second["cbt_audit"]["status"] == "ok"
        assert restored_hash(repo, second["id"], 0, tmp_path) == sha(lab.read_disk(vm, 0))
    finally:
        with lab_session(lab) as s:
            ref = next(v for v in inventory.list_vms(s) if v.name == vm).ref
            for snap in snapshots.snapshots_of(s, ref):
                if snap.name == "admin":
                    wait_for_task(s, snap.snapshot.RemoveSnapshot_Task(False))
