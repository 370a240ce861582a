"""A Prefect API that does not answer is one line and exit code 21 naming it — for an
orchestrated run (it was a traceback ending in Prefect's "RuntimeError: Failed to reach API")
and for ``serve --api-url`` (an ``httpx.ConnectError`` traceback).  Real subprocesses, a port
nothing listens on."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.support.run_cli import VMKEEP, cli_env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_orchestrated_run_without_its_api_is_one_line(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    env = cli_env()
    env["VMKEEP_REPO"] = str(tmp_path / "repo")
    assert subprocess.run([*VMKEEP, "init"], env=env, capture_output=True, timeout=120
                          ).returncode == 0
    api = f"http://127.0.0.1:{_closed_port()}/api"
    env["PREFECT_API_URL"] = api
    out = subprocess.run([*VMKEEP, "backup", "image", str(image), "--name", "d"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 21, out.stderr
    assert f"Cannot reach the Prefect API at {api}: connection refused" in out.stderr
    assert "--no-prefect" in out.stderr and "Traceback" not in out.stderr
    env["PREFECT_API_URL"] = ""
    listed = subprocess.run([*VMKEEP, "list"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert "0 restore point(s)" in listed.stderr, listed.stderr


def test_serve_on_an_api_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    api = f"http://127.0.0.1:{_closed_port()}/api"
    env = cli_env()
    out = subprocess.run([*VMKEEP, "serve", "--setup-only", "--api-url", api, "--home",
                          str(tmp_path / "home")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 21, out.stderr
    assert f"Cannot reach the Prefect API at {api}: connection refused" in out.stderr
    assert "Traceback" not in out.stderr
