"""Shared helpers for the licence bypass regression tests."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from vmkeep import clock
from vmkeep.flows.backup_image import backup_image
from vmkeep.flows.run import run_flow
from vmkeep.licensing.gate import client_item
from vmkeep.licensing.ledger import Ledger
from vmkeep.storage.repository import Repository

#: the real CLI, as installed (no test-only key or clock): python -m vmkeep.cli
REAL_VMKEEP = [sys.executable, "-m", "vmkeep.cli"]


def make_image(path: Path, seed: int, size: int = 64 * 1024) -> Path:
    path.write_bytes(bytes([seed % 251]) * size)
    return path


def new_repo(path: Path) -> str:
    Repository.init(str(path), image_chunk_size=64 * 1024)
    return str(path)


def back_up_image(repo: str, image: Path, name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = run_flow(backup_image, False, repo=repo, path=str(image),
                                   name=name or image.stem)
    return out


def record_clients(n: int, prefix: str = "other", when: datetime | None = None) -> None:
    """Pretend this installation already protected ``n`` file clients (in its ledger)."""
    at = when or clock.now()
    items = [client_item(f"{prefix}{i}", at) for i in range(n)]
    Ledger().transact(lambda _: (None, items))


def real_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``vmkeep ARGS`` exactly as installed: no tests.support.run_cli, nothing patched."""
    full = dict(os.environ, PREFECT_API_URL="", **env)
    return subprocess.run([*REAL_VMKEEP, *args], capture_output=True, text=True, env=full,
                          timeout=300)
