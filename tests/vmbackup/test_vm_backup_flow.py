"""The backup-vm flow against the ESX lab: full then CBT incremental, each restore bit-identical
to the disk at snapshot time; snapshots always released."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab


def vmkeep_snapshots(lab: Any) -> list[str]:
    from vmkeep.vsphere import snapshots
    from vmkeep.vsphere.connection import connect
    from vmkeep.vsphere.credentials import Credentials
    from vmkeep.vsphere.tls import TLSOptions

    with connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile)) as s:
        return [snap.name for snap, _ in snapshots.find_vmkeep_snapshots(s)]


def restored_disk_hash(repo: str, point_id: str, disk: int, tmp: Path) -> str:
    repository = Repository.open(repo)
    out = tmp / f"r-{point_id[:8]}-{disk}.img"
    restore_disk(repository, repository.load_point(point_id), disk, str(out))
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_full_then_cbt_incremental_restore_bit_identically(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    vm = "small01"
    first = run_flow(backup_vm, False, repo=repo, vm=vm, enable_cbt=True, **vc_env)
    assert first["snapshot_removed"] and first["disks"]
    assert {d["mode"] for d in first["disks"]} == {"full"}
    at_first = hashlib.sha256(lab.read_disk(vm, 0)).hexdigest()

    written = lab.write(vm, 1, seed=3)
    assert written
    second = run_flow(backup_vm, False, repo=repo, vm=vm, **vc_env)
    assert {d["mode"] for d in second["disks"]} == {"cbt"}, second["disks"]
    size = second["disks"][0]["size"]
    assert second["disks"][0]["bytes_read"] < size / 5
    at_second = hashlib.sha256(lab.read_disk(vm, 0)).hexdigest()
    lab.write(vm, 1, seed=4)  # later writes must not leak into the restore point

    assert restored_disk_hash(repo, first["id"], 0, tmp_path) == at_first
    assert restored_disk_hash(repo, second["id"], 0, tmp_path) == at_second
    assert vmkeep_snapshots(lab) == []
    point = Repository.open(repo).load_point(second["id"])
    assert point.kind == "vm" and point.meta["vm_config"]["format"] == "vmkeep.vmconfig"
    assert point.parent == first["id"]
