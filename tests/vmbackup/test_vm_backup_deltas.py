"""Full and incremental VM backups of VMs whose disks are delta chains in both ESX formats —
``legacy01`` on VMFS5 (COWD, 512-byte grains) and ``app01`` on VMFS6 (SEsparse, two disks, with
guest trims leaving unmapped grains) — restore bit for bit to the lab's own view of each disk
(``vmkeep lab export-disk``) as it was when the backup ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots, snapshot
from tests.vmbackup.vmbackup_helpers import restored_hash, sha
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow

pytestmark = pytest.mark.lab


def exported(lab: Any, vm: str, disk: int, tmp: Path) -> str:
    out = tmp / f"export-{vm}-{disk}.raw"
    lab.export_disk(vm, disk, out)
    digest = sha(out.read_bytes())
    out.unlink()
    return digest


@pytest.mark.parametrize("vm_name, ndisks", [("legacy01", 1), ("app01", 2)])
def test_full_and_incremental_backups_through_delta_chains_restore_exactly(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path, vm_name: str, ndisks: int
) -> None:
    si = lab.connect()
    vm = find_vm(si, vm_name)
    remove_all_snapshots(vm)
    try:
        # An administrator's snapshot: vmkeep's snapshot disk is then a chain of two deltas.
        snapshot(vm, "admin-before-patching")
        for d in range(ndisks):
            written = lab.write(vm_name, 4, disk=d, seed=50 + d)
            lab.write(vm_name, disk=d, at=written[0], trim=True)  # over the parent's data too
            lab.write(vm_name, 1, disk=d, seed=60 + d, trim=True)
        first = run_flow(backup_vm, False, repo=repo, vm=vm_name, **vc_env)
        assert len(first["disks"]) == ndisks
        for d in range(ndisks):
            assert restored_hash(repo, first["id"], d, tmp_path) == exported(
                lab, vm_name, d, tmp_path
            ), f"full backup of {vm_name} disk {d}"

        trims = {}
        for d in range(ndisks):
            written = lab.write(vm_name, 2, disk=d, seed=70 + d)
            lab.write(vm_name, disk=d, at=written[-1], trim=True)
            trims[d] = written[-1]
        second = run_flow(backup_vm, False, repo=repo, vm=vm_name, **vc_env)
        for d, disk in enumerate(second["disks"]):
            assert disk["mode"] in ("cbt", "scan"), disk
            assert restored_hash(repo, second["id"], d, tmp_path) == exported(
                lab, vm_name, d, tmp_path
            ), f"incremental backup of {vm_name} disk {d}"
            off, n = trims[d]
            assert lab.read_disk(vm_name, d, offset=off, length=n) == bytes(n)
        # the administrator's snapshot is untouched, vmkeep's own is gone
        [root] = vm.snapshot.rootSnapshotList
        assert root.name == "admin-before-patching" and not root.childSnapshotList
    finally:
        remove_all_snapshots(vm)
