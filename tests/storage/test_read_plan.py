"""ReadPlan: refused when it contradicts itself, executed as planned by backup_disk; the typed
per-disk CBT state survives a committed restore point."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.storage_helpers import restored_sha, scribble, sha
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.read_plan import (
    BaseRef,
    CbtOrigin,
    DiskCbtState,
    ReadPlan,
    Transport,
    image_plan,
)
from vmkeep.storage.repository import Repository

BASE = BaseRef(None, 0)


@pytest.mark.parametrize(
    ("mode", "extents", "base"),
    [
        ("full", None, BASE),  # a full read has no base
        ("scan", None, None),  # nor can a scan compare with nothing
        ("cbt", None, BASE),  # cbt without its changed extents
        ("cbt", ((0, 1),), None),
        ("scan", ((0, 1),), BASE),  # a scan reads everything
        ("fast", None, None),
    ],
)
def test_contradictory_plans_are_refused(mode: str, extents: object, base: object) -> None:
    with pytest.raises(ValueError):
        ReadPlan(2000, mode, "why", extents, base)  # type: ignore[arg-type]


def test_image_planner() -> None:
    class Table:
        size = 100

    assert image_plan(100, None, allocated=[(0, 10)]).extents == ((0, 10),)
    assert image_plan(100, Table(), changed=[(5, 5)]).mode == "cbt"
    assert image_plan(100, Table()).mode == "scan"
    resized = image_plan(200, Table(), changed=[(5, 5)])
    assert resized.mode == "scan" and "size" in resized.reason


def test_the_plan_is_executed_as_given(repo: Repository, image: Path, tmp_path: Path) -> None:
    size = image.stat().st_size
    with open(image, "rb") as f:
        first = backup_disk(repo, f, size, plan=ReadPlan(7, "full", "planned full"))
    p1 = commit_point(repo, "img", [first])
    assert (first.info.mode, first.info.reason) == ("full", "planned full")
    scribble(image, [(70_000, 10)])
    cbt = ReadPlan(7, "cbt", "planned cbt", ((70_000, 10),), BaseRef(p1.id, 0))
    with open(image, "rb") as f:
        with pytest.raises(ValueError, match="chunk table"):
            backup_disk(repo, f, size, plan=cbt)  # the base's table was not given
        second = backup_disk(repo, f, size, parent=p1.chunks[0], plan=cbt)
    p2 = commit_point(repo, "img", [second], parent=p1.id)
    assert (second.info.mode, second.info.reason) == ("cbt", "planned cbt")
    assert second.stats.bytes_read == 64 * 1024  # one chunk touched
    assert restored_sha(repo, p2.id, tmp_path) == sha(image)
    with open(image, "ab") as f:
        f.write(b"grown")
    with open(image, "rb") as f, pytest.raises(ValueError, match="cbt plan over a base"):
        backup_disk(repo, f, size + 5, parent=p2.chunks[0], plan=cbt)  # never silently a scan


def test_cbt_state_survives_a_committed_point(repo: Repository, image: Path) -> None:
    state = DiskCbtState(
        "52 de-66 77/3", True, image.stat().st_size, "[ds1] vm/vm.vmdk", "uuid-1", "full",
        CbtOrigin("vmkeep", False, "52 de-66 77"), 0, (), None, "trust",
        {"result": "not applicable", "reason": "full read"}, False,
        Transport("https", "--transport https"),
    )
    with open(image, "rb") as f:
        result = backup_disk(repo, f, image.stat().st_size,
                             extra={"key": 2000, **state.to_extra()})
    point = commit_point(repo, "vm1", [result], kind="vm")
    again = Repository.open(repo.backend.location).load_point(point.id)
    assert DiskCbtState.of_disk(again.disks[0]) == state
