"""Finding 6 (locks): a garbage file in ``locks/`` blocked backups forever and ``unlock`` never
removed it.  Now it blocks like a lock whose owner died — for the staleness period after it
was written — and ``unlock`` reports it with its age and removes it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.security.conftest import vmkeep
from vmkeep.storage.errors import RepositoryLocked
from vmkeep.storage.locks import acquire, list_locks, remove_stale
from vmkeep.storage.repository import Repository

GARBAGE_ID = "f" * 32


def plant_garbage(repo: Repository, age_s: float) -> Path:
    path = Path(repo.backend.location, "locks", GARBAGE_ID)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"\x00garbage, not JSON")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_garbage_lock_blocks_only_until_stale(repo: Repository) -> None:
    path = plant_garbage(repo, age_s=60)
    with pytest.raises(RepositoryLocked, match="unreadable lock"):
        acquire(repo.backend, "shared", wait=0, refresh=0)
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    with acquire(repo.backend, "shared", wait=0, refresh=0):
        pass  # two hours old: stale, like any lock not refreshed for 30 min


def test_unlock_reports_garbage_with_its_age_and_removes_it(repo: Repository) -> None:
    path = plant_garbage(repo, age_s=3 * 3600)
    (info,) = list_locks(repo.backend)
    assert info.problem and info.age().total_seconds() >= 3 * 3600 - 60
    out = vmkeep("unlock", "--json", repo=repo.backend.location)
    assert out.returncode == 0, out.stderr
    (removed,) = json.loads(out.stdout)["removed"]
    assert removed["id"] == GARBAGE_ID and removed["problem"] and removed["age_s"] >= 10000
    assert not path.exists()
    plant_garbage(repo, age_s=60)  # a fresh one is removed too (no process holds garbage)
    text = vmkeep("unlock", repo=repo.backend.location)
    assert text.returncode == 0 and "unreadable lock" in text.stderr and "ago" in text.stderr


def test_unlock_remove_all_removes_live_locks(repo: Repository) -> None:
    lock = acquire(repo.backend, "exclusive", wait=0, refresh=0)
    assert remove_stale(repo.backend) == []  # a live owner's lock stays
    (removed,) = remove_stale(repo.backend, remove_all=True)
    assert removed.id == lock.info.id and list_locks(repo.backend) == []
