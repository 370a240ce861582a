"""Fixtures for the file-backup tests: a repository, the dev licence."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guestfiles.files_helpers import licence_env, new_repo
from vmkeep.storage.repository import Repository


@pytest.fixture
def licensed(monkeypatch: pytest.MonkeyPatch) -> None:
    licence_env(monkeypatch)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return new_repo(tmp_path / "repo")
