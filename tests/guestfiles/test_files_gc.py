"""#24.2 for file restore points: a restore of files keeps every read succeeding while prune
repacks everything underneath it (GC v2 leases; the interleaving is fixed by the restore's
progress callback, which runs prune in the middle of the restore)."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

from vmkeep.guestfiles.backup import commit_file_point
from vmkeep.guestfiles.local import LocalSource
from vmkeep.guestfiles.restore import restore_paths
from vmkeep.storage.checker import check_repository
from vmkeep.storage.file_backup import backup_files
from vmkeep.storage.file_manifest import latest_file_point
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository


def _backup(repo: Repository, src: Path) -> str:
    parent = latest_file_point(repo, "t")
    result = backup_files(repo, LocalSource(src), parent)
    point = commit_file_point(
        repo, "t", result, source=str(src), client="t", parent=parent.id if parent else None
    )
    return point.id


def test_a_file_restore_survives_a_full_repack(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"), pack_size=256 << 10)
    rng = random.Random(5)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):
        (src / f"f{i:02}").write_bytes(rng.randbytes(90_000))
    first = _backup(repo, src)
    for i in range(0, 24, 2):
        (src / f"f{i:02}").write_bytes(rng.randbytes(90_000))
    expected = {p.name: p.read_bytes() for p in src.iterdir()}
    kept = _backup(repo, src)
    forget_ids(repo, [first])
    repo.close()

    reader = Repository.open(repo.backend.location)
    reports = []

    def progress(_n: int) -> None:  # the first file is written: prune everything now
        if not reports:
            reports.append(
                prune(Repository.open(repo.backend.location), grace=timedelta(0), repack_below=1.0)
            )

    out = tmp_path / "out"
    out.mkdir()
    restore_paths(reader, kept, ["/"], out, progress)
    assert reports and reports[0].packs_repacked > 0 and reports[0].packs_held_by_leases > 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == expected
    reader.close()
    after = prune(Repository.open(repo.backend.location), grace=timedelta(0), repack_below=1.0)
    assert after.packs_deleted > 0
    assert check_repository(Repository.open(repo.backend.location), read_data=True).ok
