"""A point's header read once (a listing, ``NAME@latest`` resolved) names it again without
fetching its manifest a second time (``verify`` labels its steps so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, write_image
from vmkeep.jobs.verify import _label
from vmkeep.storage.repository import Repository


def test_a_resolved_point_is_labelled_without_another_read(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_id = backup(repo, write_image(tmp_path / "disk.img"), name="web01")[0].id
    fresh = Repository.open(repo.backend.location)
    assert fresh.known_summary(point_id) is None  # nothing read yet: no I/O either
    assert fresh.resolve("web01@latest") == point_id
    gets: list[str] = []
    real_get = fresh.backend.get
    monkeypatch.setattr(fresh.backend, "get", lambda key, *a, **k: gets.append(key) or
                        real_get(key, *a, **k))
    assert _label(fresh, point_id) == f"web01 {point_id[:8]}"
    assert gets == []


def test_an_unread_point_is_labelled_from_its_manifest(repo: Repository, tmp_path: Path) -> None:
    point_id = backup(repo, write_image(tmp_path / "disk.img"), name="db01")[0].id
    assert _label(Repository.open(repo.backend.location), point_id) == f"db01 {point_id[:8]}"
