"""Fixtures for storage tests: repositories on local disk and in memory, sample disk images."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.storage_helpers import write_image
from vmkeep.storage.repository import Repository


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_image(tmp_path / "disk.img")
