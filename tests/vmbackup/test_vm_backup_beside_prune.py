"""#18: a VM backup from the ESX lab runs beside prune and deduplicates against the very chunks
prune is collecting (a forgotten point of the same VM), at two fixed points of prune's protocol:
after the mark (the backup may use the packs prune is about to condemn: they must be revived)
and after the condemnation (the backup stores those chunks again).  Afterwards ``check
--read-data`` is clean and the point restores bit-identically to the lab's disk."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.checker import check_repository
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab

VM = "small06"  # kept clean by every test: its disk is the same before and after


@pytest.mark.parametrize("at", ["marked", "condemned"])
def test_vm_backup_during_prune_loses_nothing(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path, at: str
) -> None:
    first = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    forget_ids(Repository.open(repo), [first["id"]])  # its chunks are now prune's garbage
    done: list[dict[str, Any]] = []

    def step(name: str) -> None:
        if name == at and not done:
            done.append(run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env))

    report = prune(Repository.open(repo), grace=timedelta(0), repack_below=0.9, step=step)
    assert done, f"prune never reached {at!r}"
    assert report.packs_revived + report.packs_held_by_leases + report.packs_deleted > 0
    prune(Repository.open(repo), grace=timedelta(0), repack_below=0.9)
    repository = Repository.open(repo)
    assert check_repository(repository, read_data=True).ok
    point = repository.load_point(done[0]["id"])
    out = tmp_path / "disk0.img"
    restore_disk(repository, point, 0, str(out))
    expected = hashlib.sha256(lab.read_disk(VM, 0)).hexdigest()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == expected
