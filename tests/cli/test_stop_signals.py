"""SIGTERM and SIGHUP stop a CLI run as Ctrl-C does: the run's cleanup runs (no lock left, no
restore point half-made), the job report says what stopped it, and the exit code is the shell's
``128 + signum``.  The run is slowed by ``--limit-read`` so that the signal lands mid-backup;
the test waits for the run's repository lock (the job has started) before sending it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.servers.notify_servers import Webhook, eventually, webhook
from tests.support.run_cli import VMKEEP, cli_env

__all__ = ["webhook"]  # fixture


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_") or k in (
        "VMKEEP_STATE_DIR", "VMKEEP_CONFIG_DIR")}
    return cli_env(base, **{"PREFECT_API_URL": "", **extra})


def _locks(repo: Path) -> list[Path]:
    folder = repo / "locks"
    return list(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stopped_backup_cleans_up_reports_and_exits_128_plus_signum(
    tmp_path: Path, webhook: Webhook, sig: signal.Signals
) -> None:
    repo = tmp_path / "repo"
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(4 << 20))
    env = _env(VMKEEP_NOTIFY=webhook.url(), VMKEEP_NOTIFY_ON="failure")
    assert subprocess.run([*VMKEEP, "init", "--repo", str(repo)], env=env,
                          capture_output=True).returncode == 0
    proc = subprocess.Popen(
        [*VMKEEP, "--limit-read", "256", "backup", "image", str(image), "--name", "web01",
         "--repo", str(repo)],  # 4 MiB at 256 KiB/s: about 16 s unless stopped
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        eventually(lambda: _locks(repo) or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (out, err)
    assert f"terminated by {sig.name}" in err and "Traceback" not in err
    assert _locks(repo) == []  # the run gave its lock back
    listed = subprocess.run([*VMKEEP, "list", "--repo", str(repo), "--json"], env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 0 and '"web01"' not in listed.stdout  # no restore point
    [post] = eventually(lambda: webhook.posts)
    assert post["type"] == "failure" and post["title"].startswith("[Failed] vmkeep backup-image")
    assert f"Result: failed: terminated by {sig.name}" in post["message"], post["message"]
    checked = subprocess.run([*VMKEEP, "check", "--repo", str(repo)], env=env,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
