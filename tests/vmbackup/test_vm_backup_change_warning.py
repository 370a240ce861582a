"""Unusual change warnings on the lab: after three small CBT incrementals, a backup that finds a
large part of the VM's disk rewritten — of the VM renamed meanwhile — warns (summary, log) and
records it in the restore point, which ``list`` then marks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyVim.task import WaitForTask

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.restore.restore_helpers import run_cli
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
VM = "app01"  # two disks (32 MiB ext4, 16 MiB raw)


def test_a_mass_rewrite_after_small_incrementals_warns(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    monkeypatch.setenv("VMKEEP_CHANGE_WARN_MIN_MIB", "4")
    first = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    assert first["warnings"] == []
    for seed in (1, 2, 3):
        lab.write(VM, 1, disk=1, seed=90 + seed)  # ~1 % of the 16 MiB disk
        small = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
        assert not [w for w in small["warnings"] if w.startswith("unusual change")], small
    lab.write(VM, 60, disk=1, seed=99)  # most of the disk rewritten at once
    # renamed meanwhile: the history follows the VM's chain (instanceUuid), not its name
    vm = find_vm(lab.connect(), VM)
    WaitForTask(vm.Rename_Task(VM + "-renamed"))
    try:
        burst = run_flow(backup_vm, False, repo=repo, vm=VM + "-renamed", **vc_env)
    finally:
        WaitForTask(vm.Rename_Task(VM))
    [warning] = [w for w in burst["warnings"] if w.startswith("unusual change")]
    assert "the median of its last 3 incremental backups" in warning
    point = Repository.open(repo).load_point(burst["id"])
    assert warning in point.meta["warnings"]
    code, out, err = run_cli("list", repo=repo)
    assert code == 0, err
    [flagged] = [line for line in out.splitlines() if "unusual-change" in line]
    assert burst["id"][:8] in flagged
