"""Which restore points a tape copy takes: named ones, every point new to the pool
(``--all-new``), or the newest point of each backup name (``--latest``, for GFS pools) — each
pool judged on its own (pure selection: catalog records are written directly, no drive)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, write_image
from vmkeep.jobs.maintenance_specs import TapeCopySpec
from vmkeep.storage.repository import Repository
from vmkeep.tape import catalog
from vmkeep.tape.catalog import FileRecord, points_to_copy


def _on_tape(repo: Repository, pool: str, tape: str, points: list[str]) -> None:
    rec = FileRecord(tape, pool, 1, "job", repo.config.id, "2026-12-04T00:00:00+00:00", 1 << 20)
    rec.points = {p: [] for p in points}
    catalog.save(repo, rec)


def test_each_pool_takes_what_it_does_not_hold(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    img = write_image(tmp_path / "a.img", size=256 * 1024)
    a1, _ = backup(repo, img, name="web01")
    b1, _ = backup(repo, img, name="db01")
    a2, _ = backup(repo, write_image(img, size=256 * 1024, seed=7), name="web01")
    _on_tape(repo, "daily", "VMK001L6", [a1.id, b1.id])

    assert points_to_copy(repo, "daily") == [a2.id]
    # a point on a daily cartridge is still new to the weekly pool (GFS: separate copies)
    assert points_to_copy(repo, "weekly") == [a1.id, b1.id, a2.id]
    # the newest point of each name, unless the pool has it
    assert points_to_copy(repo, "weekly", newest_only=True) == [b1.id, a2.id]
    _on_tape(repo, "weekly", "VMK002L6", [a2.id])
    assert points_to_copy(repo, "weekly", newest_only=True) == [b1.id]


@pytest.mark.parametrize("fields", [{}, {"all_new": True, "latest": True},
                                    {"points": ["abc"], "all_new": True}])
def test_a_copy_names_exactly_one_way_to_choose(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="one of all_new and latest"):
        TapeCopySpec(repo="/r", library="lab", **fields)


def test_a_damaged_point_is_reported_not_chosen(tmp_path: Path) -> None:
    from vmkeep.storage.manifest import point_key

    repo = Repository.init(str(tmp_path / "repo"))
    img = write_image(tmp_path / "a.img", size=256 * 1024)
    good, _ = backup(repo, img, name="web01")
    bad, _ = backup(repo, write_image(img, size=256 * 1024, seed=3), name="db01")
    repo.backend.put(point_key(bad.id), b"not parquet")  # its manifest is garbage now
    damaged: list = []
    assert points_to_copy(repo, "daily", damaged=damaged) == [good.id]
    assert [d.id for d in damaged] == [bad.id]
