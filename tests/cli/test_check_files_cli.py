"""check covers file restore points too: clean when intact, names file paths when damaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

KEYS = Path(__file__).resolve().parents[1] / "licensing" / "keys"


def vmkeep(*args: str, repo: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(repo),
               VMKEEP_LICENSE=str(KEYS / "dev_licence.json"))  # run_cli trusts its key
    return subprocess.run([sys.executable, "-m", "tests.support.run_cli", *args],
                          capture_output=True, text=True, env=env)


def test_check_reads_file_points(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    (tree / "note.txt").write_text("hello\n" * 1000)
    assert vmkeep("init", repo=repo).returncode == 0
    backed = vmkeep("backup", "files", str(tree), "--name", "tree", repo=repo)
    assert backed.returncode == 0, backed.stderr
    clean = vmkeep("check", "--read-data", "--json", repo=repo)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["points"] == 1

    for pack in (repo / "packs").rglob("*"):
        if pack.is_file():
            pack.unlink()
    damaged = vmkeep("check", "--json", repo=repo)
    assert damaged.returncode == 13
    affected = [a for p in json.loads(damaged.stdout)["problems"] for a in p["affected"]]
    assert {a.get("path") for a in affected} >= {"sub/data.bin"} or any(
        str(a.get("path", "")).endswith("data.bin") for a in affected
    )
