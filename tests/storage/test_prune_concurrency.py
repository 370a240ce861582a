"""Two backups into one repository while forget and prune run, many rounds: nothing referenced is
ever lost and no backup fails (GC v2: prune runs beside the backups' leases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.storage.storage_helpers import restored_sha, scribble, sha, write_image
from vmkeep.storage.checker import check_repository
from vmkeep.storage.repository import Repository

VMKEEP = [sys.executable, "-m", "tests.support.run_cli"]
ROUNDS = 6


def test_backups_and_prune_together_never_lose_referenced_data(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = dict(
        os.environ,
        VMKEEP_REPO=str(repo),
        PREFECT_API_URL="",
        VMKEEP_LOCK_WAIT="0",  # nobody may need to wait: prune runs beside the backups
    )
    init = subprocess.run([*VMKEEP, "init", "--chunk-size", "64", "--pack-size", "1"], env=env)
    assert init.returncode == 0
    images = {
        n: write_image(tmp_path / f"{n}.img", size=3 << 20, seed=i) for i, n in enumerate("ab")
    }
    deleted = 0
    for rnd in range(ROUNDS):
        for i, path in enumerate(images.values()):
            scribble(path, [(rnd * 300_000 + i * 70_000, 250_000)], seed=rnd * 10 + i)
        expected = {name: sha(path) for name, path in images.items()}
        procs = [
            subprocess.Popen(
                [*VMKEEP, "backup", "image", str(path), "--name", name],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for name, path in images.items()
        ]
        procs.append(
            subprocess.Popen(
                [*VMKEEP, "forget", "--keep-last", "2", "--prune", "--json"]
                if rnd % 2
                else [*VMKEEP, "prune", "--grace", "0s", "--repack-below", "0.8", "--json"],
                # the forget+prune rounds see every object as old through a clock far ahead
                env=dict(env, VMKEEP_TEST_NOW="2099-01-01T00:00:00") if rnd % 2 else env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
        for proc in procs:
            out, err = proc.communicate(timeout=3600)  # a hang guard
            assert proc.returncode == 0, err.decode()
        result = json.loads(out)
        deleted += result.get("prune", result)["packs_deleted"]
        repository = Repository.open(str(repo))
        report = check_repository(repository, read_data=True)
        assert report.ok, report.to_json()
        for name, digest in expected.items():
            point = repository.resolve(f"{name}@latest")
            assert restored_sha(repository, point, tmp_path) == digest, (rnd, name)
        repository.close()  # its reader lease would hold back the next rounds' deletions
    assert len(Repository.open(str(repo)).list_points()) >= 4
    # Whether a prune beside the backups could delete anything depends on how their leases
    # overlapped — the machine's speed (an idle run deleted nothing in all six rounds).  What
    # they held back must go once they are done: one more forget+prune, alone.
    alone = subprocess.run(
        [*VMKEEP, "forget", "--keep-last", "2", "--prune", "--json"],
        env=dict(env, VMKEEP_TEST_NOW="2099-01-01T00:00:00"), capture_output=True, timeout=3600,
    )
    assert alone.returncode == 0, alone.stderr.decode()
    deleted += json.loads(alone.stdout)["prune"]["packs_deleted"]
    assert deleted > 0
    repository = Repository.open(str(repo))
    assert check_repository(repository, read_data=True).ok
    for name, digest in expected.items():
        assert restored_sha(repository, repository.resolve(f"{name}@latest"), tmp_path) == digest
    repository.close()
