"""``vmkeep serve``: the one command, as a user runs it (subprocess), against real servers.

* a full ``vmkeep serve`` (own server on SQLite, pools, a local worker; ``--no-deploy``) that
  stops everything on SIGTERM;
* ``--setup-only --api-url`` (pools, Secret block, variables, ``prefect deploy --all``) is what
  the two-worker test (test_deploy_workers.py) runs against its PostgreSQL-backed server;
* option parsing (``--set NAME=JSON``) without a server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vmkeep.cli.serve import _variables
from vmkeep.deployments import pools
from vmkeep.deployments.prefect_server import free_port
from vmkeep.errors import UsageError


def test_set_options_become_variables() -> None:
    got = _variables("https://vc", "admin", None, "/srv/repo", None, ["web*"],
                     ['san_mounts={"ds1": "/mnt/ds1"}', "vmkeep_stage_dir=/var/stage"])
    assert got == {
        "vmkeep_vcenter": "https://vc",
        "vmkeep_vcenter_user": "admin",
        "vmkeep_repo_lan": "/srv/repo",
        "vmkeep_vms_lan": ["web*"],
        "vmkeep_san_mounts": {"ds1": "/mnt/ds1"},
        "vmkeep_stage_dir": "/var/stage",
    }
    with pytest.raises(UsageError):
        _variables(None, None, None, None, None, None, ["no-equals-sign"])
    with pytest.raises(ValueError, match="unknown vmkeep variables"):
        pools.ensure_variables({"vmkeep_nope": 1})


@pytest.mark.slow
def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # the profile serve activates
    env.pop("PREFECT_PROFILES_PATH", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmkeep.cli", "serve", "--home", str(tmp_path / "home"),
         "--port", str(port), "--vcenter", "https://vc.example", "--repo", str(tmp_path / "r"),
         "--no-deploy"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 900  # a hang guard on a loaded machine
        seen = ""
        assert proc.stdout is not None
        while "Prefect UI:" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
        assert "Prefect UI:" in seen, seen
        assert f"export PREFECT_API_URL=http://127.0.0.1:{port}/api" in seen, seen
        profiles = (tmp_path / "prefect-home" / "profiles.toml").read_text()
        assert 'active = "vmkeep"' in profiles and f"127.0.0.1:{port}/api" in profiles
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=60) as r:
            assert r.status == 200
        worker_log = tmp_path / "home" / "workers" / "lan.log"
        assert worker_log.exists()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=300)  # serve stops its workers and server: a hang guard
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)


def test_empty_required_settings_are_found() -> None:
    """Deployments whose required settings are empty are switched off (issue 19: the daily
    file backup ran with an empty source and committed a nameless point)."""
    raw = {"spec": {"repo": "{{ prefect.variables.vmkeep_repo_lan }}",
                    "source": "{{ prefect.variables.vmkeep_files_source }}",
                    "vcenter": {"url": "{{ prefect.variables.vmkeep_vcenter }}",
                                "cafile": "{{ prefect.variables.vmkeep_vcenter_cafile }}"},
                    "exclude_caches": True}}
    deployed = {"spec": {"repo": "/srv/repo", "source": "", "exclude_caches": True,
                         "vcenter": {"url": "", "cafile": ""}}}
    assert sorted(pools.empty_settings(raw, deployed)) == ["vmkeep_files_source", "vmkeep_vcenter"]
    deployed["spec"].update(source="/home", vcenter={"url": "vc", "cafile": ""})
    assert pools.empty_settings(raw, deployed) == []  # the CA file is optional


def test_the_offsite_copy_limit_reaches_its_worker_environment_as_text(prefect_api: str) -> None:
    """``--set offsite_limit_upload=10240`` (JSON: a number) is stored as text, and
    ``prefect deploy``'s variable resolution puts it into the off-site copy's job environment,
    where a process worker takes only text ("" = no limit: an empty variable counts as unset)."""
    import asyncio

    import yaml
    from prefect.utilities.templating import resolve_variables
    from prefect.variables import Variable

    spec = yaml.safe_load(pools.PREFECT_FILE.read_text())
    [offsite] = [d for d in spec["deployments"] if d["name"] == "nightly-offsite"]
    pools.ensure_variables({"vmkeep_offsite_limit_upload": 10240})
    assert Variable.get("vmkeep_offsite_limit_upload") == "10240"
    pool = asyncio.run(resolve_variables(offsite["work_pool"]))
    assert pool["name"] == pools.POOLS["lan"]
    assert pool["job_variables"]["env"] == {"VMKEEP_DATA_PATH": "lan",
                                            "VMKEEP_LIMIT_UPLOAD": "10240"}
    pools.ensure_variables({"vmkeep_offsite_limit_upload": ""})
    pool = asyncio.run(resolve_variables(offsite["work_pool"]))
    assert pool["job_variables"]["env"]["VMKEEP_LIMIT_UPLOAD"] == ""
