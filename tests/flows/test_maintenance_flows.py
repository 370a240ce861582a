"""The maintenance verbs through a real Prefect server (#19): ``prune`` and ``verify fs`` with
``--prefect`` run their flows with readable run names, and an expected error — a restore point
that does not exist — ends the run Failed with one line, and the CLI with one line and its exit
code, no traceback."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from tests.storage.storage_helpers import backup, write_image
from tests.support.run_cli import VMKEEP, cli_env
from vmkeep.storage.repository import Repository


def _flow_runs(flow_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def read() -> list[Any]:
        async with get_client() as client:
            return list(await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name]))))

    return asyncio.run(read())


def test_prune_and_verify_point_run_as_named_flows(prefect_api: str, tmp_path: Path) -> None:
    location = str(tmp_path / "repo")
    repo = Repository.init(location)
    backup(repo, write_image(tmp_path / "d.img", size=256 * 1024, seed=5))
    env = cli_env(PREFECT_API_URL=prefect_api)

    pruned = subprocess.run([*VMKEEP, "prune", "--grace", "0s", "--repo", location, "--json",
                             "--prefect"], env=env, capture_output=True, text=True, timeout=600)
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert '"points": 1' in pruned.stdout

    missing = subprocess.run([*VMKEEP, "verify", "fs", "deadbeef", "--repo", location,
                              "--prefect"], env=env, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 10 or missing.returncode == 14, missing.stderr[-3000:]
    assert "Traceback" not in missing.stderr and "deadbeef" in missing.stderr

    runs = _flow_runs("prune")
    assert any(r.name.startswith(f"prune {location} grace=0s ") for r in runs), [
        r.name for r in runs]
    [failed] = [r for r in _flow_runs("verify-point") if "deadbeef" in r.name]
    assert failed.name.startswith("verify fs deadbeef ")
    assert failed.state_type.value == "FAILED"
    assert "deadbeef" in (failed.state.message or "") and "\n" not in failed.state.message
