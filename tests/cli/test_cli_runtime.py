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
        "import sys, vmkeep.jobs.backup_vm, vmkeep.jobs.backup_vms, vmkeep.jobs.backup_image,"
        " vmkeep.jobs.backup_files, vmkeep.flows.run, vmkeep.runtime,"
        " vmkeep.jobs.sweep_snapshots, vmkeep.jobs.restore_image, vmkeep.jobs.restore_files,"
        " vmkeep.jobs.restore_file_point, vmkeep.jobs.restore_vm, vmkeep.jobs.restore_disk;"
        " print('prefect' in sys.modules)"
    )
    env = dict(os.environ, PREFECT_API_URL="")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_api_url_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)  # tests/conftest.py sets one
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert not orchestration.prefect_api_configured()
    (tmp_path / "profiles.toml").write_text(
        'active = "site"\n[profiles.site]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
    )
    assert orchestration.prefect_api_configured()
    monkeypatch.setenv("PREFECT_API_URL", "http://x/api")
    assert orchestration.prefect_api_configured()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (".env", "PREFECT_API_URL=http://127.0.0.1:4200/api\n"),
        ("prefect.toml", '[api]\nurl = "http://127.0.0.1:4200/api"\n'),
    ],
)
def test_prefect_settings_files_count(tmp_path: Path, name: str, text: str) -> None:
    """Prefect's own loader decides: a .env or prefect.toml in the working directory counts
    (the hand-written profile reader missed both)."""
    work = tmp_path / "work"
    work.mkdir()
    code = "from vmkeep.runtime import api_configured; print(api_configured())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    before = subprocess.run([sys.executable, "-c", code], cwd=work, env=env,
                            capture_output=True, text=True)
    assert before.stdout.strip() == "False", before.stderr
    (work / name).write_text(text)
    after = subprocess.run([sys.executable, "-c", code], cwd=work, env=env,
                           capture_output=True, text=True)
    assert after.stdout.strip() == "True", after.stderr


def test_every_verb_is_registered() -> None:
    out = subprocess.run([sys.executable, "-m", "vmkeep.cli", "--help"], capture_output=True,
                         text=True)
    for verb in ("init", "backup", "list", "restore", "check", "sweep", "license", "lab"):
        assert verb in out.stdout
    backup = subprocess.run([sys.executable, "-m", "vmkeep.cli", "backup", "--help"],
                            capture_output=True, text=True)
    for kind in ("image", "vm"):
        assert kind in backup.stdout
