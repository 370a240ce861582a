"""``vmkeep protect`` / ``unprotect`` as users run them: a protected point survives keep rules
(and says why), a forget by id is refused with exit 1 and one line, ``list`` shows the note."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.run_cli import VMKEEP, cli_env


def vmkeep(*args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_") or k in (
        "VMKEEP_STATE_DIR", "VMKEEP_CONFIG_DIR")}
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, timeout=600,
                          env=cli_env(base, PREFECT_API_URL=""))


def test_protect_list_forget_unprotect(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    image = tmp_path / "disk.img"
    assert vmkeep("init", "--repo", repo).returncode == 0
    for i in range(3):
        image.write_bytes(os.urandom(50_000) + bytes([i]))
        assert vmkeep("backup", "image", str(image), "--name", "db01", "--repo", repo
                      ).returncode == 0
    points = json.loads(vmkeep("list", "--repo", repo, "--json").stdout)["points"]
    oldest = points[0]["short_id"]
    assert all(p["protected"] is None for p in points)

    done = vmkeep("protect", oldest, "--note", "audit 2026", "--repo", repo, "--json")
    assert done.returncode == 0, done.stderr
    [record] = json.loads(done.stdout)["protected"]
    assert record["point"] == points[0]["id"] and record["note"] == "audit 2026"
    table = vmkeep("list", "--repo", repo).stdout
    assert "Protected" in table and "audit 2026" in table

    kept = json.loads(vmkeep("forget", "--keep-last", "1", "--repo", repo, "--json").stdout)
    assert {p["short_id"]: p["reasons"] for p in kept["kept"]}[oldest] == ["protected"]
    assert kept["forgotten"] == [points[1]["id"]]

    refused = vmkeep("forget", oldest, "--repo", repo)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "is protected" in refused.stderr and "audit 2026" in refused.stderr
    assert "vmkeep unprotect" in refused.stderr

    gone = vmkeep("unprotect", oldest, "db01@latest", "--repo", repo, "--json")
    assert json.loads(gone.stdout) == {"unprotected": [points[0]["id"]],
                                       "were_not_protected": [points[2]["id"]]}
    assert vmkeep("forget", oldest, "--repo", repo).returncode == 0
    missing = vmkeep("protect", "ffffffff", "--repo", repo)
    assert missing.returncode == 14 and "Traceback" not in missing.stderr


def test_a_file_point_is_protected_like_an_image_point(tmp_path: Path) -> None:
    """File points are restore points too (was: "unexpected manifest schema", read as damage)."""
    repo = str(tmp_path / "repo")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("kept for the audit\n")
    assert vmkeep("init", "--repo", repo).returncode == 0
    assert vmkeep("backup", "files", str(tree), "--name", "docs", "--repo", repo
                  ).returncode == 0
    done = vmkeep("protect", "docs@latest", "--note", "legal hold", "--repo", repo, "--json")
    assert done.returncode == 0, done.stderr
    [record] = json.loads(done.stdout)["protected"]
    refused = vmkeep("forget", record["point"][:8], "--repo", repo)
    assert refused.returncode == 1 and "legal hold" in refused.stderr
    # the record garbled on the target: still protected, and the listing says why
    (tmp_path / "repo" / "protected" / record["point"]).write_bytes(b"\x00rot")
    table = vmkeep("list", "--repo", repo)
    assert "yes (record unreadable)" in table.stdout and "stays protected" in table.stderr
    assert vmkeep("forget", record["point"][:8], "--repo", repo).returncode == 1
    assert vmkeep("unprotect", "docs@latest", "--repo", repo).returncode == 0
    assert vmkeep("forget", record["point"][:8], "--repo", repo).returncode == 0
