"""``init`` says whether the repository is encrypted; with a password in the environment but
no ``--encrypt`` — restic's users take a password for encryption — it says that only
``--encrypt`` encrypts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _init(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_PASSWORD")}
    base.update(VMKEEP_CONFIG_DIR=str(tmp_path / "cfg"), VMKEEP_STATE_DIR=str(tmp_path / "st"),
                PREFECT_API_URL="", **env)
    return subprocess.run([sys.executable, "-m", "vmkeep.cli", "init", *argv],
                          capture_output=True, text=True, env=base, timeout=120)


def test_a_password_without_encrypt_is_noted(tmp_path: Path) -> None:
    done = _init(tmp_path, "--repo", str(tmp_path / "a"), VMKEEP_PASSWORD="secret")
    assert done.returncode == 0, done.stderr
    assert "(not encrypted)" in done.stderr
    assert "note: VMKEEP_PASSWORD is set, but only `init --encrypt` encrypts" in done.stderr
    pw_file = tmp_path / "pw"
    pw_file.write_text("secret\n")
    done = _init(tmp_path, "--repo", str(tmp_path / "b"), "--json",
                 VMKEEP_PASSWORD_FILE=str(pw_file))
    assert json.loads(done.stdout)["encrypted"] is False
    assert "VMKEEP_PASSWORD_FILE is set" in done.stderr


def test_encrypted_and_passwordless_say_so_without_a_note(tmp_path: Path) -> None:
    done = _init(tmp_path, "--repo", str(tmp_path / "a"), "--encrypt", VMKEEP_PASSWORD="s")
    assert done.returncode == 0 and "(encrypted)" in done.stderr and "note" not in done.stderr
    done = _init(tmp_path, "--repo", str(tmp_path / "b"), "--json")
    assert json.loads(done.stdout)["encrypted"] is False and "note" not in done.stderr
