"""A VM backup stopped by SIGTERM (systemd stopping its unit, ``timeout``, ``kill``) releases its
snapshot itself — no sweep needed — gives its lock back, commits nothing and exits 143.  The
backup's reads are slowed by ``--limit-read`` so that the signal lands while the snapshot is
held; the test waits for the snapshot to exist before sending it (no sleeping and hoping)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
VM = "app01"


@pytest.mark.parametrize("orchestrated", [False, True], ids=["in-process", "prefect"])
def test_sigterm_mid_backup_releases_the_snapshot(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path, orchestrated: bool,
    request: pytest.FixtureRequest,
) -> None:
    """In-process, and as a Prefect flow run the CLI started (``--prefect``): the same."""
    remove_all_snapshots(find_vm(lab.connect(), VM))
    api = request.getfixturevalue("prefect_api") if orchestrated else ""
    env = dict(os.environ, PREFECT_API_URL=api, VMKEEP_REPO=repo)
    log = tmp_path / "backup.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_cli", "--limit-read", "1024", "backup",
             "vm", VM, "--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"],
             "--full", "--prefect" if orchestrated else "--no-prefect"],
            # 48 MiB read whole at 1 MiB/s: far longer than the wait below
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 900  # waits for a state; only stops a hang
            while not vmkeep_snapshots(lab) and proc.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
            assert proc.poll() is None, log.read_text()[-2000:]
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    said = log.read_text()
    assert proc.returncode == 143, said[-2000:]
    assert "terminated by SIGTERM" in said and "Traceback" not in said
    assert vmkeep_snapshots(lab) == []  # released by the run, not left for the sweep
    assert Repository.open(repo).list_points() == []
    locks = Path(repo, "locks")
    assert not locks.is_dir() or not any(locks.iterdir())  # the run gave its lock back
