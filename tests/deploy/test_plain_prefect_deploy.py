"""A Prefect user's path without ``vmkeep serve`` (issue 20, item 2).

Against a clean Prefect 3 server, exactly the commands docs/prefect.md gives:
``prefect work-pool create … --type process`` for the three pools, then
``prefect deploy --all --prefect-file vmkeep/deployments/prefect.yaml`` with no ``vmkeep_*``
variable set.  It must succeed, register every deployment with its schedule off (nothing runs
unconfigured) and say in each description which variables it needs.  Setting the variables and
deploying again fills the parameters in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vmkeep.deployments import pools, prefect_server

pytestmark = pytest.mark.slow


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    prefect = Path(sys.executable).with_name("prefect")
    return subprocess.run(
        [str(prefect), "--no-prompt", *args], env=env, capture_output=True, text=True,
        cwd=pools.PREFECT_FILE.parent.parent.parent, stdin=subprocess.DEVNULL,
    )


def test_plain_prefect_deploy_on_a_clean_server(tmp_path: Path) -> None:
    server = prefect_server.start(tmp_path / "server")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(prefect_server.quiet_prefect_env(tmp_path / "client"))
        env["PREFECT_API_URL"] = server.api_url
        for pool in pools.POOLS.values():
            made = _prefect(env, "work-pool", "create", pool, "--type", "process")
            assert made.returncode == 0, made.stdout + made.stderr
        prefect_file = "vmkeep/deployments/prefect.yaml"
        first = _prefect(env, "deploy", "--all", "--prefect-file", prefect_file)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

        from prefect.client.orchestration import SyncPrefectClient
        from prefect.settings import PREFECT_API_URL, temporary_settings

        spec = yaml.safe_load(pools.PREFECT_FILE.read_text())
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            from prefect.client.orchestration import get_client

            client: SyncPrefectClient
            with get_client(sync_client=True) as client:
                deployed = {d.name: d for d in client.read_deployments()}
                assert set(deployed) == {d["name"] for d in spec["deployments"]}
                for want in spec["deployments"]:
                    got = deployed[want["name"]]
                    assert not any(s.active for s in got.schedules), got.name
                    assert "Needs the Prefect variables" in (got.description or ""), got.name
                assert deployed["nightly-lan"].parameters["spec"]["repo"] == ""

            from prefect.variables import Variable

            Variable.set("vmkeep_repo_lan", "/srv/vmkeep", overwrite=True)
            Variable.set("vmkeep_vms_lan", ["web*", "db01"], overwrite=True)
            again = _prefect(env, "deploy", "--name", "nightly-lan", "--prefect-file",
                             prefect_file)
            assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
            with get_client(sync_client=True) as client:
                nightly = client.read_deployment_by_name("backup-vms/nightly-lan")
            assert nightly.parameters["spec"]["repo"] == "/srv/vmkeep"
            assert nightly.parameters["spec"]["patterns"] == ["web*", "db01"]
    finally:
        server.stop()
