"""kill -9 during a backup: older restore points restore bit-identically and check stays clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.storage.storage_helpers import sha, write_image
from vmkeep.storage.checker import check_repository
from vmkeep.storage.repository import Repository

VMKEEP = [sys.executable, "-m", "tests.support.run_cli"]


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
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    kills = 0
    for delay in (0.2, 0.6, 0.9, 1.2, 1.5, 1.8, 2.2, 2.8):
        proc = subprocess.Popen(
            [*VMKEEP, "backup", "image", str(big), "--name", "big"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        repository = Repository.open(repo)
        report = check_repository(repository, read_data=True)
        assert report.ok, report.to_json()
        out = tmp_path / "restored.img"
        assert run("restore", "image", "first@latest", "--to", str(out), env=env).returncode == 0
        assert sha(out) == first_hash
        out.unlink()
    assert kills >= 3, "the backup finished too fast to be interrupted; enlarge the image"

    # and the next run works and is complete
    done = run("backup", "image", str(big), "--name", "big", "--json", env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "big-restored.img"
    assert run("restore", "image", "big@latest", "--to", str(out), env=env).returncode == 0
    assert sha(out) == sha(big)
