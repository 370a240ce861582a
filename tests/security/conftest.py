"""Fixtures for the security suite: repositories on local disk, a sample image, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fast_kdf import ROOT, fast_kdf  # noqa: F401  (fixture re-exported for this package)
from tests.storage.storage_helpers import write_image
from vmkeep.storage.repository import Repository

PW = "correct horse battery staple"


@pytest.fixture(autouse=True)
def no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VMKEEP_PASSWORD", "VMKEEP_PASSWORD_FILE", "VMKEEP_PASSWORD_COMMAND"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A plain repository with small packs (several packs even for a small image)."""
    return Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, pack_size=256 << 10)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_image(tmp_path / "disk.img")


def vmkeep(
    *args: str, repo: Path | str, password: str | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run the CLI (the test-only launcher: dev licence key, fast KDF) against ``repo``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_PASSWORD")}
    env.update(PREFECT_API_URL="", VMKEEP_REPO=str(repo))
    if password is not None:
        env["VMKEEP_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "tests.support.run_cli", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, **kw,  # type: ignore[call-overload]
    )
