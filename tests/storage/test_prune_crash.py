"""kill -9 at every step of prune: remaining restore points restore bit-identically, check stays
clean, and the next prune (once the dead process's lock is stale) finishes the job."""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.storage.crash_helpers import prune_until_killed
from tests.storage.storage_helpers import backup, restored_sha, scribble, sha, write_image
from vmkeep import clock
from vmkeep.storage.backend import TEMP_MARKER
from vmkeep.storage.catalogs import CATALOG_PREFIX
from vmkeep.storage.checker import check_repository
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

STEPS = [
    ("locked", 1),
    ("planned", 1),
    ("repack-pack-written", 1),
    ("repacked", 1),
    ("index-written", 1),
    ("indexed", 1),
    ("index-deleted", 1),
    ("index-deleted", 3),
    ("pack-deleted", 1),
    ("pack-deleted", 2),
    ("catalog-deleted", 1),
    ("temporary-deleted", 1),
    ("done", 1),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("prune-crash")
    repo = Repository.init(str(tmp / "repo"), image_chunk_size=64 * 1024, pack_size=256 << 10)
    a = write_image(tmp / "a.img", seed=1)
    b = write_image(tmp / "b.img", seed=2)
    a1, _ = backup(repo, a, name="a")
    b1, _ = backup(repo, b, name="b")
    scribble(a, [(0, 300_000), (1_200_000, 100_000)], seed=3)
    a2, _ = backup(repo, a, name="a")
    scribble(b, [(50_000, 200_000)], seed=4)
    b2, _ = backup(repo, b, name="b")
    expected = {a2.id: sha(a), b2.id: sha(b)}
    forget_ids(repo, [a1.id, b1.id])
    # leftovers prune also clears: an orphaned catalog, temporary files of crashed writers
    repo.backend.put(f"{CATALOG_PREFIX}/{a1.id}.parquet", b"catalog of a forgotten point")
    old = time.time() - 7200
    for sub in ("index", ""):
        tmp_file = tmp / "repo" / sub / f"{TEMP_MARKER}crashed{len(sub)}"
        tmp_file.write_bytes(b"partial")
        os.utime(tmp_file, (old, old))
    return tmp / "repo", expected


def assert_intact(repo_path: Path, expected: dict[str, str], tmp: Path) -> None:
    repo = Repository.open(str(repo_path))
    report = check_repository(repo, read_data=True)
    assert report.ok, report.to_json()
    for point_id, digest in expected.items():
        assert restored_sha(repo, point_id, tmp) == digest


@pytest.mark.parametrize(("step", "nth"), STEPS, ids=[f"{s}-{n}" for s, n in STEPS])
def test_kill_9_at_each_prune_step(
    template: tuple[Path, dict[str, str]], tmp_path: Path, step: str, nth: int
) -> None:
    source, expected = template
    repo_path = tmp_path / "repo"
    shutil.copytree(source, repo_path)
    assert prune_until_killed(str(repo_path), step, nth, repack_below=0.9)
    assert_intact(repo_path, expected, tmp_path)

    # the dead process's lock blocks until stale (same host, dead pid, 30 min unrefreshed)
    with clock.frozen(clock.now() + timedelta(minutes=31)):
        report = prune(Repository.open(str(repo_path)), grace=timedelta(0), repack_below=0.9)
    assert report.missing_blobs == 0
    assert_intact(repo_path, expected, tmp_path)
    with clock.frozen(clock.now() + timedelta(minutes=31)):
        again = prune(Repository.open(str(repo_path)), grace=timedelta(0), repack_below=0.9)
    assert again.packs_deleted == 0 and again.unindexed_packs_deleted == 0
    assert again.catalogs_deleted == 0 and again.temp_files_deleted == 0
