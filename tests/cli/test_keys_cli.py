"""CLI: `init --encrypt`, passwords from the environment only, `key add|list|remove`, exit 12."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.run_cli import ROOT, VMKEEP  # the CLI with the dev key and a cheap KDF


def vmkeep(*args: str, repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_PASSWORD")}
    full_env = dict(base, PREFECT_API_URL="", VMKEEP_REPO=str(repo), **env)
    return subprocess.run(
        [*VMKEEP, *args], capture_output=True, text=True, env=full_env, cwd=ROOT
    )


def test_encrypted_repository_cli(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert vmkeep("init", "--encrypt", repo=repo).returncode == 2  # no password given
    assert vmkeep("init", "--encrypt", repo=repo, VMKEEP_PASSWORD="s3cret").returncode == 0
    img = tmp_path / "a.img"
    img.write_bytes(os.urandom(200_000))
    out = vmkeep(
        "backup",
        "image",
        str(img),
        "--name",
        "a",
        "--no-prefect",
        repo=repo,
        VMKEEP_PASSWORD="s3cret",
    )
    assert out.returncode == 0, out.stderr
    missing = vmkeep("list", repo=repo)
    assert missing.returncode == 12 and "VMKEEP_PASSWORD" in missing.stderr
    wrong = vmkeep("list", repo=repo, VMKEEP_PASSWORD="guess")
    assert wrong.returncode == 12 and "Wrong password" in wrong.stderr
    assert "Traceback" not in wrong.stderr and "guess" not in wrong.stderr

    pwfile = tmp_path / "pw"
    pwfile.write_text("s3cret\n")
    added = vmkeep(
        "key",
        "add",
        "--json",
        repo=repo,
        VMKEEP_PASSWORD_FILE=str(pwfile),
        VMKEEP_NEW_PASSWORD="other",
    )
    assert added.returncode == 0, added.stderr
    new_id = json.loads(added.stdout)["id"]
    listed = vmkeep("key", "list", "--json", repo=repo, VMKEEP_PASSWORD_COMMAND="echo other")
    keys = json.loads(listed.stdout)["keys"]
    assert len(keys) == 2 and [k["id"] for k in keys if k["current"]] == [new_id]
    old_id = next(k["id"] for k in keys if not k["current"])
    assert vmkeep("key", "remove", old_id, repo=repo, VMKEEP_PASSWORD="other").returncode == 0
    assert vmkeep("list", repo=repo, VMKEEP_PASSWORD="s3cret").returncode == 12
    assert vmkeep("check", "--read-data", repo=repo, VMKEEP_PASSWORD="other").returncode == 0


def test_a_new_password_file_that_cannot_be_read_is_exit_12_and_adds_no_key(
    tmp_path: Path,
) -> None:
    """``VMKEEP_NEW_PASSWORD_FILE`` naming a missing file ended ``key add`` in a
    FileNotFoundError traceback; an empty one said to set the variable that was set."""
    repo = tmp_path / "repo"
    assert vmkeep("init", "--encrypt", repo=repo, VMKEEP_PASSWORD="s3cret").returncode == 0
    empty, latin1 = tmp_path / "empty", tmp_path / "latin1"
    empty.write_text("\n")
    latin1.write_bytes(b"caf\xe9\n")
    for path, says in ((tmp_path / "missing", "No such file"), (empty, "first line is empty"),
                       (latin1, "not UTF-8")):
        added = vmkeep("key", "add", repo=repo, VMKEEP_PASSWORD="s3cret",
                       VMKEEP_NEW_PASSWORD_FILE=str(path))
        assert added.returncode == 12, added.stderr
        assert "VMKEEP_NEW_PASSWORD_FILE" in added.stderr and says in added.stderr, added.stderr
        assert "Traceback" not in added.stderr
    listed = vmkeep("key", "list", "--json", repo=repo, VMKEEP_PASSWORD="s3cret")
    assert len(json.loads(listed.stdout)["keys"]) == 1
