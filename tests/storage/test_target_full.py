"""A full target (an 8 MiB tmpfs): clean failure, nothing half-committed, the next run works
once prune has freed the failed run's leftovers."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, restored_sha, sha, write_image
from vmkeep import clock
from vmkeep.storage.backend import TEMP_MARKER
from vmkeep.storage.checker import check_repository
from vmkeep.storage.errors import TargetFull
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository


def test_full_target_fails_cleanly(small_fs: Path, tmp_path: Path) -> None:
    repo = Repository.init(str(small_fs / "repo"), image_chunk_size=64 * 1024, pack_size=1 << 20)
    small = write_image(tmp_path / "small.img", size=2 << 20)
    p1, _ = backup(repo, small, name="small")
    big = tmp_path / "big.img"
    big.write_bytes(os.urandom(12 << 20))
    with pytest.raises(TargetFull) as err:
        backup(repo, big, name="big")
    assert err.value.exit_code == 15
    fresh = Repository.open(str(small_fs / "repo"))
    assert [p.name for p in fresh.list_points()] == ["small"]  # nothing half-committed
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, p1.id, tmp_path) == sha(small)
    leftovers = [n for _, _, files in os.walk(small_fs) for n in files if TEMP_MARKER in n]
    assert leftovers == []
    # the failed run's packs are unreferenced: condemned, unlisted, then deleted by successive
    # prunes (GC version 2: one stage a run while no lease holds them back)
    repo.close()
    fresh.close()  # their reader leases would hold the packs back (as a running restore's do)
    start = clock.now()
    reports = []
    for minutes in (1, 2, 3):
        with clock.frozen(start + timedelta(minutes=minutes)):
            pruning = Repository.open(str(small_fs / "repo"))
            reports.append(prune(pruning, grace=timedelta(0)))
            pruning.close()
    assert reports[0].to_delete
    assert sum(r.unindexed_packs_deleted + r.bytes_deleted for r in reports) > 0
    medium = tmp_path / "medium.img"
    medium.write_bytes(os.urandom(3 << 20))
    fresh = Repository.open(str(small_fs / "repo"))
    p2, _ = backup(fresh, medium, name="medium")
    assert restored_sha(fresh, p2.id, tmp_path) == sha(medium)
