"""Fixtures for VM backup tests against the ESX lab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmkeep.storage.repository import Repository


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("esx_lab")


@pytest.fixture
def vc_env(lab: Any, monkeypatch: pytest.MonkeyPatch, dev_licence: None) -> dict[str, Any]:
    """vCenter credentials in the environment (never parameters) and the TLS CA file."""
    monkeypatch.setenv("VMKEEP_VC_USER", lab.user)
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", lab.password)
    return {"vcenter": lab.url, "cafile": lab.cafile}


@pytest.fixture
def repo(tmp_path: Path) -> str:
    path = tmp_path / "repo"
    Repository.init(str(path), image_chunk_size=256 * 1024)
    return str(path)


@pytest.fixture
def mover(lab: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """This test process is the mover's "operating system": its device folder and its name
    (``VMKEEP_MOVER``, ``VMKEEP_HOTADD_DEVICE_DIR``) from the lab's ready document."""
    from vmkeep.vsphere import hotadd

    [doc] = lab.info.movers
    monkeypatch.setenv(hotadd.MOVER_ENV, doc["name"])
    monkeypatch.setenv(hotadd.DEVICE_DIR_ENV, doc["device_dir"])
    return dict(doc)
