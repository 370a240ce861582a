"""The CLI contract of forget, prune and unlock: JSON shapes, exit codes, lock errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

VMKEEP = [sys.executable, "-m", "tests.support.run_cli"]


def vmkeep(*args: str, repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(repo), **env)
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, env=full_env)


def test_forget_prune_unlock(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert vmkeep("init", "--chunk-size", "64", repo=repo).returncode == 0
    img = tmp_path / "a.img"
    ids = []
    for i in range(3):
        img.write_bytes(os.urandom(300_000))
        out = vmkeep(
            "backup",
            "image",
            str(img),
            "--name",
            "a",
            "--json",
            "--no-prefect",
            repo=repo,
            VMKEEP_TEST_NOW=f"2025-01-0{i + 1}T12:00:00",
        )
        assert out.returncode == 0, out.stderr
        ids.append(json.loads(out.stdout)["id"])

    assert vmkeep("forget", repo=repo).returncode == 2  # no rules: refuse to guess
    assert vmkeep("forget", "--keep-within", "3x", repo=repo).returncode == 2
    dry = vmkeep("forget", "--keep-daily", "2", "--dry-run", "--json", repo=repo)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["forgotten"] == [ids[0]] and len(plan["kept"]) == 2
    assert len(json.loads(vmkeep("list", "--json", repo=repo).stdout)["points"]) == 3

    done = vmkeep("forget", "--keep-last", "1", "--json", repo=repo)
    assert sorted(json.loads(done.stdout)["forgotten"]) == sorted(ids[:2])
    pruned = vmkeep("prune", "--grace", "0s", "--json", repo=repo)
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert report["packs_deleted"] >= 1 and report["missing_blobs"] == 0
    assert report["bytes_freed"] > 0 and report["gc_version"] == 2
    assert vmkeep("check", "--read-data", repo=repo).returncode == 0
    stats = json.loads(vmkeep("stats", "--grace", "0s", "--json", repo=repo).stdout)
    assert stats["points"] == 1 and stats["referenced_bytes"] > 0
    assert stats["per_point"][0]["unique_bytes"] == stats["referenced_bytes"]
    assert "zstd_levels" not in stats  # trailers are read only when asked
    levels = json.loads(vmkeep("stats", "--levels", "--json", repo=repo).stdout)["zstd_levels"]
    assert set(levels) == {"blobs", "packs", "per_pack"} and len(levels["per_pack"]) >= 1
    checked = vmkeep("check", repo=repo)
    assert "packs by levels:" in checked.stderr, checked.stderr
    assert vmkeep("prune", "--max-unused", "150%", repo=repo).returncode == 2

    # an explicit id may forget the newest point
    assert vmkeep("forget", ids[2][:10], repo=repo).returncode == 0
    assert json.loads(vmkeep("list", "--json", repo=repo).stdout)["points"] == []

    # a live exclusive lock (a key change): prune exits 11 naming the holder; unlock leaves
    # live locks alone.  (Shared leases never stop prune: see tests/storage/test_gc_concurrent.)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from vmkeep.storage.repository import Repository;"
            f"l=Repository.open({str(repo)!r}).lock('exclusive'); print('ok', flush=True);"
            "sys.stdin.read()",  # holds the lock until the test is done with it, however long
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        locked = vmkeep("prune", repo=repo)
        assert locked.returncode == 11
        assert "exclusive lock" in locked.stderr and str(holder.pid) in locked.stderr
        unlocked = vmkeep("unlock", "--json", repo=repo)
        assert json.loads(unlocked.stdout)["removed"] == []
        assert [i["owner_gone"] for i in json.loads(unlocked.stdout)["remaining"]] == [False]
    finally:
        holder.kill()
        holder.wait()
    # killed: its lock still counts (another PID namespace could own it), and unlock says so
    gone = vmkeep("unlock", repo=repo)
    said = " ".join(gone.stderr.split())
    assert "its process is gone; stale at" in said and "--remove-all" in said, said
    assert [i["owner_gone"] for i in json.loads(
        vmkeep("unlock", "--json", repo=repo).stdout)["remaining"]] == [True]
    # the dead holder's lock turns stale after 30 minutes, then unlock removes it
    stale = vmkeep("unlock", "--json", repo=repo, VMKEEP_TEST_NOW="2099-01-01T00:00:00")
    assert len(json.loads(stale.stdout)["removed"]) == 1
    assert vmkeep("prune", repo=repo).returncode == 0
