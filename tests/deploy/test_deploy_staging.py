"""Staging-proxy mode of backup-vm: disks copied to a local folder, the snapshot released before
the chunking starts, restore points bit-identical, the staged copies gone afterwards."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from vmkeep.errors import VmkeepError
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import snapshots
from vmkeep.vsphere.connection import connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.tls import TLSOptions

pytestmark = pytest.mark.lab


def vmkeep_snapshot_names(lab: Any) -> list[str]:
    creds = Credentials(lab.user, lab.password)
    with connect(lab.url, creds, TLSOptions(cafile=lab.cafile)) as s:
        return [snap.name for snap, _ in snapshots.find_vmkeep_snapshots(s)]


def restored_sha(repo: str, point_id: str, disk: int, tmp: Path) -> str:
    repository = Repository.open(repo)
    out = tmp / f"r-{point_id[:8]}-{disk}.img"
    restore_disk(repository, repository.load_point(point_id), disk, str(out))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return digest


class SnapshotProbe:
    """A progress callback that looks at the lab's snapshots when chunking starts."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.at_first_chunk: list[str] | None = None

    def __call__(self, n: int) -> None:
        if self.at_first_chunk is None:
            self.at_first_chunk = vmkeep_snapshot_names(self.lab)


def test_staging_releases_snapshot_before_chunking(
    esx_lab: Any, lab_env: dict[str, Any], staged_repo: str, tmp_path: Path
) -> None:
    vm, stage = "linux01", tmp_path / "stage"
    ndisks = len(esx_lab.vm(vm)["disks"])
    probe = SnapshotProbe(esx_lab)
    first = run_flow(backup_vm, False, repo=staged_repo, vm=vm, enable_cbt=True,
                     stage_dir=str(stage), progress=probe, **lab_env)
    at_first = [hashlib.sha256(esx_lab.read_disk(vm, d)).hexdigest() for d in range(ndisks)]
    assert probe.at_first_chunk == [], "snapshot still there when chunking started"
    assert first["snapshot_removed"]
    assert list(stage.iterdir()) == []  # staged copies deleted

    esx_lab.write(vm, 2, disk=0, seed=31)
    probe = SnapshotProbe(esx_lab)
    second = run_flow(backup_vm, False, repo=staged_repo, vm=vm, stage_dir=str(stage),
                      progress=probe, **lab_env)
    at_second = [hashlib.sha256(esx_lab.read_disk(vm, d)).hexdigest() for d in range(ndisks)]
    esx_lab.write(vm, 1, disk=0, seed=32)  # later writes must not reach the staged point
    assert probe.at_first_chunk == []
    assert [d["mode"] for d in second["disks"]] == ["cbt"] * ndisks, second["disks"]
    assert second["disks"][0]["bytes_read"] < second["disks"][0]["size"] / 5
    for d in range(ndisks):
        assert restored_sha(staged_repo, first["id"], d, tmp_path) == at_first[d]
        assert restored_sha(staged_repo, second["id"], d, tmp_path) == at_second[d]
    assert list(stage.iterdir()) == []
    assert vmkeep_snapshot_names(esx_lab) == []


def test_staging_failure_leaves_no_copies_and_no_snapshot(
    esx_lab: Any, lab_env: dict[str, Any], staged_repo: str, tmp_path: Path
) -> None:
    stage = tmp_path / "stage"
    # 64 KiB: small enough to hit CBT's allocated-areas reads too (CBT is on by default)
    with esx_lab.fault("ds_drop", None, count=0, bytes=64 << 10), pytest.raises(VmkeepError):
        run_flow(backup_vm, False, repo=staged_repo, vm="small01", stage_dir=str(stage),
                 **lab_env)
    assert not stage.exists() or list(stage.iterdir()) == []
    assert vmkeep_snapshot_names(esx_lab) == []
