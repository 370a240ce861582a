"""Direct mode never imports Prefect; the decision is made before any flow is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmkeep import orchestration


def test_direct_mode_never_imports_prefect() -> None:
    code = (
        "import sys, vmkeep.flows.backup_vm, vmkeep.flows.backup_vms, vmkeep.flows.backup_image,"
        " vmkeep.flows.restore_image, vmkeep.flows.sweep_snapshots;"
        " print('prefect' in sys.modules)"
    )
    env = dict(os.environ, VMKEEP_PREFECT="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_api_url_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)  # tests/conftest.py sets one
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert not orchestration.prefect_api_configured()
    (tmp_path / "profiles.toml").write_text(
        'active = "site"\n[profiles.site]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
    )
    assert orchestration.prefect_api_configured()
    monkeypatch.setenv("PREFECT_API_URL", "http://x/api")
    assert orchestration.prefect_api_configured()


def test_every_verb_is_registered() -> None:
    out = subprocess.run([sys.executable, "-m", "vmkeep.cli", "--help"], capture_output=True,
                         text=True)
    for verb in ("init", "backup", "list", "restore", "check", "sweep", "license", "lab"):
        assert verb in out.stdout
    backup = subprocess.run([sys.executable, "-m", "vmkeep.cli", "backup", "--help"],
                            capture_output=True, text=True)
    for kind in ("image", "vm"):
        assert kind in backup.stdout
