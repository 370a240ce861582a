"""kill -9 during a backup, at each step of the commit order (after the first pack, after a later
pack, after the index, after the manifest): older restore points restore bit-identically, check
stays clean, a point exists only if its manifest was written, and the next run works.

The kills are placed by test-only crash points (:mod:`vmkeep.storage.crash_points`), not by
timing: the backup parks at the step and is killed there, whatever the machine's speed or load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.storage.crash_helpers import run_until_killed
from tests.storage.storage_helpers import sha, write_image
from vmkeep.storage.checker import check_repository
from vmkeep.storage.repository import Repository

VMKEEP = [sys.executable, "-m", "tests.support.run_cli"]

# (step, n): kill -9 right after the n-th time the backup completed that step
KILL_POINTS = [("pack", 1), ("pack", 3), ("index", 1), ("manifest", 1)]


def run(*args: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, **kw)


def test_kill_9_during_backup_never_damages_older_points(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    env = dict(os.environ, VMKEEP_REPO=repo, PREFECT_API_URL="")
    assert run("init", "--chunk-size", "64", "--pack-size", "1", env=env).returncode == 0
    first = write_image(tmp_path / "first.img", size=4 << 20, seed=3)
    assert run("backup", "image", str(first), "--name", "first", env=env).returncode == 0
    first_hash = sha(first)

    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        for _ in range(8):  # incompressible: 8 packs of 1 MiB
            f.write(os.urandom(1 << 20))
    backup_big = [*VMKEEP, "backup", "image", str(big), "--name", "big"]
    for step, nth in KILL_POINTS:
        marker = run_until_killed(backup_big, step, nth, env, tmp_path)
        assert marker.startswith(f"{step} {nth} ")
        repository = Repository.open(repo)
        report = check_repository(repository, read_data=True)
        assert report.ok, (step, nth, report.to_json())
        # a restore point exists exactly when its manifest was written before the kill
        assert bool(repository.list_points("big")) == (step == "manifest"), (step, nth)
        out = tmp_path / "restored.img"
        assert run("restore", "image", "first@latest", "--to", str(out), env=env).returncode == 0
        assert sha(out) == first_hash
        out.unlink()
        if step == "manifest":  # the point the killed run published is complete
            res = run("restore", "image", "big@latest", "--to", str(out), env=env)
            assert res.returncode == 0, res.stderr
            assert sha(out) == sha(big)
            out.unlink()

    # and the next run works and is complete
    with open(big, "r+b") as f:
        f.write(os.urandom(1 << 20))
    done = run("backup", "image", str(big), "--name", "big", "--json", env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "big-restored.img"
    assert run("restore", "image", "big@latest", "--to", str(out), env=env).returncode == 0
    assert sha(out) == sha(big)


def test_crash_points_do_nothing_unless_a_test_arms_them(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.storage import crash_points

    monkeypatch.delenv(crash_points.ENV_AT, raising=False)
    assert crash_points._plan_from_env() is None
    monkeypatch.setattr(crash_points, "_PLAN", None)
    for step in crash_points.STEPS * 3:
        crash_points.reached(step)  # returns at once: nothing counted, nothing written
    assert crash_points._counts == {}
    monkeypatch.setenv(crash_points.ENV_AT, "pack")  # no N, no marker: refused loudly
    with pytest.raises(ValueError, match="STEP:N"):
        crash_points._plan_from_env()
