"""A VM with an administrator's own snapshot ("before patching") is backed up through its delta
chain: full then CBT incremental, each restore bit-identical to the disk at backup time; the
administrator's snapshot is left alone and vmkeep's is gone afterwards."""

from __future__ import annotations

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
from vmkeep.vsphere import inventory, snapshots
from vmkeep.vsphere.waiter import wait_for_task

pytestmark = pytest.mark.lab
VM = "small04"  # not used by the other VM backup tests
ADMIN = "admin-before-patching"


def test_vm_with_an_administrators_snapshot_is_backed_up_through_the_chain(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    with lab_session(lab) as s:
        vm = next(v for v in inventory.list_vms(s) if v.name == VM)
        wait_for_task(s, vm.ref.CreateSnapshot_Task(ADMIN, "by hand", False, False))
    try:
        assert lab.write(VM, 3, seed=51)  # lands in the administrator's delta
        at_first = sha(lab.read_disk(VM, 0))
        first = run_flow(backup_vm, False, repo=repo, vm=VM, enable_cbt=True, **vc_env)
        assert first["snapshot_removed"] and first["disks"]
        assert all_snapshots(lab).get(VM) == [ADMIN]

        lab.write(VM, 1, seed=52)
        at_second = sha(lab.read_disk(VM, 0))
        second = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
        assert second["disks"][0]["mode"] == "cbt", second["disks"]
        lab.write(VM, 1, seed=53)  # later writes must not leak into the restore points

        assert restored_hash(repo, first["id"], 0, tmp_path) == at_first
        assert restored_hash(repo, second["id"], 0, tmp_path) == at_second
        assert vmkeep_snapshots(lab) == []
        assert all_snapshots(lab).get(VM) == [ADMIN]
    finally:
        with lab_session(lab) as s:
            vm = next(v for v in inventory.list_vms(s) if v.name == VM)
            for node in snapshots.snapshots_of(s, vm.ref):
                if node.name == ADMIN:
                    wait_for_task(s, node.snapshot.RemoveSnapshot_Task(False))
    assert VM not in all_snapshots(lab)
