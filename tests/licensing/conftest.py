"""Fixtures for the licensing tests: an isolated config dir trusting the development key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.licensing.licensing_devkeys import DEV_PUBLIC
from vmkeep import clock
from vmkeep.licensing import store

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def dev_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private config dir, the dev public key trusted (in-process), no licence installed;
    returns the dir."""
    cfg = tmp_path / "config"
    monkeypatch.setenv("VMKEEP_CONFIG_DIR", str(cfg))
    monkeypatch.setattr(store, "VENDOR_PUBLIC_KEY_PEM", DEV_PUBLIC.read_bytes())
    monkeypatch.delenv("VMKEEP_LICENSE", raising=False)
    return cfg


@pytest.fixture
def fixed_now() -> Iterator[datetime]:
    with clock.frozen(NOW):
        yield NOW
