"""Protected restore points: kept by keep rules, refused by id (nothing forgotten), records that
cannot be read (damaged, forged, moved) still protect, and a point protected after a policy run
decided is still kept."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, scribble, write_image
from vmkeep.errors import UsageError
from vmkeep.storage.errors import PointNotFound
from vmkeep.storage.forget import forget_by_policy, forget_ids
from vmkeep.storage.protection import (
    MAX_NOTE,
    PointProtected,
    protect,
    protection_key,
    protections,
    unprotect,
)
from vmkeep.storage.repository import Repository
from vmkeep.storage.retention import Policy


def _repo_with_points(tmp_path: Path, n: int = 3, password: str | None = None) -> Repository:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024,
                           password=password)
    img = write_image(tmp_path / "a.img", size=300_000)
    for i in range(n):
        scribble(img, [(0, 1000)], seed=10 + i)
        backup(repo, img, name="web01")
    return repo


def test_keep_rules_keep_a_protected_point_and_explicit_forget_is_refused(
    tmp_path: Path,
) -> None:
    repo = _repo_with_points(tmp_path)
    oldest, middle, newest = (p.id for p in repo.list_points())
    [record] = protect(repo, [oldest], "before the ERP upgrade")
    assert record.point == oldest and record.note == "before the ERP upgrade"

    decisions = {d.point.id: d for d in forget_by_policy(repo, Policy(last=1))}
    assert decisions[oldest].keep and decisions[oldest].reasons == ["protected"]
    assert not decisions[middle].keep and decisions[newest].keep
    assert [p.id for p in repo.list_points()] == [oldest, newest]

    with pytest.raises(PointProtected, match="before the ERP upgrade") as refused:
        forget_ids(repo, [newest, oldest])
    assert refused.value.exit_code == 1
    assert [p.id for p in repo.list_points()] == [oldest, newest]  # nothing forgotten

    assert unprotect(repo, [oldest, newest]) == [oldest]  # newest was not protected
    forget_ids(repo, [oldest])
    assert [p.id for p in repo.list_points()] == [newest]


def test_protecting_again_replaces_the_note_and_bad_input_is_refused(tmp_path: Path) -> None:
    repo = _repo_with_points(tmp_path, n=1)
    [point] = repo.list_points()
    protect(repo, [point.id], "one")
    protect(repo, [point.id], "two")
    assert protections(repo.backend)[point.id].note == "two"
    with pytest.raises(UsageError):
        protect(repo, [point.id], "x" * (MAX_NOTE + 1))
    with pytest.raises(PointNotFound):
        protect(repo, ["0" * 64])
    assert set(protections(repo.backend)) == {point.id}


def test_a_point_protected_after_the_rules_decided_is_still_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _repo_with_points(tmp_path)
    oldest = repo.list_points()[0].id
    # the policy run lists no protection, then someone protects before its forget runs
    repo.backend.put(protection_key(oldest), json.dumps({
        "format": "vmkeep-protection", "version": 1, "point": oldest,
        "time": "2026-12-05T10:00:00+00:00", "hostname": "admin01", "note": "audit"}).encode())
    with caplog.at_level(logging.WARNING):
        doomed = [p.id for p in repo.list_points()[:2]]
        forgotten = forget_ids(repo, doomed, protected="skip")
    assert forgotten == doomed[1:]  # what was forgotten, for the decisions the caller reports
    assert oldest in {p.id for p in repo.list_points()}
    assert "protected meanwhile" in caplog.text


@pytest.mark.parametrize("password", [None, "s3cret"], ids=["plain", "encrypted"])
def test_a_record_that_cannot_be_read_still_protects_its_point(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, password: str | None
) -> None:
    """Bit rot in ``protected/<id>`` must not let ``forget`` delete a point under legal hold:
    a record damaged, copied from another point's name, or not sealed with the key protects
    the point its name says, says so in the log, and ``protect`` writes it again."""
    repo = _repo_with_points(tmp_path, password=password)
    first, second, third = (p.id for p in repo.list_points())
    protect(repo, [first], "real")
    raw = repo.backend.inner if password else repo.backend  # type: ignore[attr-defined]
    raw.put(protection_key(second), raw.get(protection_key(first)))  # moved: names the first
    raw.put(protection_key(third), b"\x00garbage")  # damaged on the target
    raw.put("protected/not-a-point-id", b"{}")
    with caplog.at_level(logging.WARNING):
        held = protections(repo.backend)
    assert set(held) == {first, second, third}
    assert not held[first].damaged and held[second].damaged and held[third].damaged
    assert f"restore point {third[:8]} stays protected" in caplog.text
    assert "ignoring protected/not-a-point-id" in caplog.text
    with pytest.raises(PointProtected, match="cannot be read"):
        forget_ids(repo, [third])
    decisions = forget_by_policy(repo, Policy(last=1))
    assert all(d.keep for d in decisions) and len(repo.list_points()) == 3
    if password is not None:  # without the key, a valid-looking record is not a record either
        raw.put(protection_key(second), json.dumps({
            "format": "vmkeep-protection", "version": 1, "point": second,
            "time": "2026-12-05T10:00:00+00:00", "hostname": "x", "note": "forged"}).encode())
        assert protections(repo.backend)[second].damaged
    protect(repo, [third], "rewritten")
    assert protections(repo.backend)[third].note == "rewritten"
    assert unprotect(repo, [second, third]) == [second, third]
    assert set(protections(repo.backend)) == {first}


def test_prune_deletes_the_record_of_a_point_whose_manifest_was_lost(tmp_path: Path) -> None:
    from datetime import timedelta

    from vmkeep.storage.protection import encode
    from vmkeep.storage.prune import prune

    repo = _repo_with_points(tmp_path, n=1)
    [point] = repo.list_points()
    protect(repo, [point.id])
    lost = "ab" * 32  # a point whose manifest is gone (lost with a target, say)
    repo.backend.put(protection_key(lost), encode(lost, "left behind"))
    assert set(protections(repo.backend)) == {point.id, lost}
    prune(repo, grace=timedelta(0))
    assert set(protections(repo.backend)) == {point.id}
