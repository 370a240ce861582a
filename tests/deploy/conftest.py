"""Fixtures for the deployment tests: lab credentials in the environment, a fresh repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmkeep.storage.repository import Repository


@pytest.fixture
def lab_env(esx_lab: Any, monkeypatch: pytest.MonkeyPatch, dev_licence: None) -> dict[str, Any]:
    """vCenter credentials in the environment (never parameters) and the TLS CA file."""
    monkeypatch.setenv("VMKEEP_VC_USER", esx_lab.user)
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", esx_lab.password)
    return {"vcenter": esx_lab.url, "cafile": esx_lab.cafile}


@pytest.fixture
def staged_repo(tmp_path: Path) -> str:
    path = tmp_path / "repo"
    Repository.init(str(path), image_chunk_size=256 * 1024)
    return str(path)
