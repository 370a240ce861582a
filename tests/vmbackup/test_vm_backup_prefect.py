"""What a Prefect user sees of a VM backup run (issue 19 item 5), through the CLI against a real
Prefect server: runs named by the VM, tasks by the disk, vmkeep's lines in the run log, the
restore point id in the artifact — and an expected error as one line, no traceback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env

pytestmark = pytest.mark.lab

VM = "small02"


def _cli(*args: str) -> list[str]:
    return [*VMKEEP, *args]  # the test launcher: trusts the development licence key


async def _runs(prefix: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async with get_client() as client:
        return list(
            await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=prefix))
            )
        )


async def _details(run_id: Any) -> tuple[list[str], list[str], list[Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async with get_client() as client:
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return [t.name for t in tasks], [log.message for log in logs], list(artifacts)


def _eventually(check: Any, deadline_s: float = 300.0) -> Any:
    """Poll ``check`` until it returns a truthy value (run data arrives through events; the
    deadline only stops a hang on a loaded machine)."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(1.0)


def test_runs_a_prefect_user_can_read(
    prefect_api: str, lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    env = cli_env(PREFECT_API_URL=prefect_api, VMKEEP_REPO=repo, PREFECT_LOGGING_LEVEL="INFO")
    conn = ["--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"]]
    ok = subprocess.run(_cli("backup", "vm", VM, *conn, "--json"), env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    point = json.loads(ok.stdout)["id"]

    runs = asyncio.run(_runs(f"backup-vm {VM} "))
    assert len(runs) == 1 and runs[0].state_type.value == "COMPLETED"

    def complete() -> Any:
        tasks, logs, artifacts = asyncio.run(_details(runs[0].id))
        disk_tasks = [t for t in tasks if t.startswith("disk 0 [")]
        committed = [m for m in logs if point in m]
        return (tasks, logs, artifacts) if disk_tasks and committed and artifacts else None

    found = _eventually(complete)
    assert found, asyncio.run(_details(runs[0].id))
    tasks, logs, artifacts = found
    assert any(t.startswith("disk 0 [") and f"{VM}.vmdk" in t for t in tasks), tasks
    assert any("snapshot vmkeep-" in m and "taken" in m for m in logs), logs
    assert any("released" in m for m in logs), logs
    table = [a for a in artifacts if (a.key or "").startswith("backup-vm-")]
    assert table and point in json.dumps(table[0].data)

    bad = subprocess.run(_cli("backup", "vm", "no-such-vm", *conn), env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 16, bad.stderr
    assert "Traceback" not in bad.stderr and "no-such-vm" in bad.stderr
    failed = asyncio.run(_runs("backup-vm no-such-vm "))
    assert len(failed) == 1 and failed[0].state_type.value == "FAILED"
    assert "no-such-vm" in (failed[0].state.message or "")
    _, bad_logs, _ = _eventually(
        lambda: (lambda d: d if d[1] else None)(asyncio.run(_details(failed[0].id)))
    ) or ([], [], [])
    assert not any("Traceback" in m for m in bad_logs), bad_logs
