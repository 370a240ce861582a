"""Start and stop a local Prefect server (the demo, the tests and ``vmkeep serve`` use it).

The server runs as a subprocess (``prefect server start``) on loopback with telemetry off and its
own ``PREFECT_HOME``; :func:`start` waits until ``/api/health`` answers and returns a handle whose
``api_url`` clients put in ``PREFECT_API_URL``.  :meth:`PrefectServer.stop` terminates the whole
process group, so no server outlives its owner.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vmkeep.errors import VmkeepError


class PrefectServerError(VmkeepError):
    """The local Prefect server did not start: {}"""

    exit_code = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_prefect_env(home: Path | None = None) -> dict[str, str]:
    """Environment for offline, quiet Prefect processes (no telemetry, warnings only)."""
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
    }
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    return env


@dataclass
class PrefectServer:
    process: subprocess.Popen[bytes]
    api_url: str
    ui_url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(
    home: Path,
    port: int | None = None,
    timeout: float = 600.0,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
) -> PrefectServer:
    """Start a server with state in ``home``; raises :class:`PrefectServerError` on failure.

    ``host``: the address to listen on (loopback by default; ``0.0.0.0`` lets data movers on
    other machines reach it).  ``env``: extra environment, e.g.
    ``PREFECT_API_DATABASE_CONNECTION_URL`` for PostgreSQL (SQLite in ``home`` otherwise).
    ``timeout``: how long to wait for ``/health`` — a hang guard, not a speed requirement (a
    first start migrates the database: CPU-bound, minutes on a loaded machine)."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, **quiet_prefect_env(home), **(env or {})}
    env.pop("PREFECT_API_URL", None)
    env.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")
    reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    api_url = f"http://{reach}:{port}/api"
    env.setdefault("PREFECT_UI_API_URL", api_url)  # what the browser calls (set for remote UIs)
    log_path = home / "server.log"
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect) if prefect.exists() else "prefect", "server", "start",
           "--host", host, "--port", str(port)]
    process = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = PrefectServer(process, api_url, f"http://{reach}:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectServerError(f"exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise PrefectServerError(f"no answer on {api_url} after {timeout:.0f} s; see {log_path}")
