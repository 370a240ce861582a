"""#18: the retention flow, run through a real Prefect server, publishes what its prune freed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.storage.storage_helpers import scribble, write_image
from tests.support.run_cli import cli_env
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.repository import Repository

RUN = """
import json, sys
from vmkeep.flows.retention import retention
from vmkeep.flows.run import run_flow

result = run_flow(retention, orchestrate=True, repo=sys.argv[1], keep_last=1, keep_daily=0,
                  keep_weekly=0, keep_monthly=0, grace="0s")
print(json.dumps(result["prune"]))
"""


def _artifacts(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list[Any]:
        async with get_client() as client:
            return list(
                await client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
                )
            )

    return asyncio.run(read())


def test_retention_under_prefect_publishes_the_bytes_its_prune_freed(
    prefect_api: str, tmp_path: Path
) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    img = write_image(tmp_path / "a.img", size=2 << 20, seed=12)
    for i in range(3):  # each point rewrites the same 600 kB: the forgotten ones leave garbage
        scribble(img, [(0, 600_000)], seed=120 + i)
        with open(img, "rb") as f:
            commit_point(repo, "a", [backup_disk(repo, f, img.stat().st_size)])
    repo.close()
    proc = subprocess.run(
        [sys.executable, "-c", RUN, repo.backend.location],
        capture_output=True,
        text=True,
        env=cli_env(PREFECT_API_URL=prefect_api),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pruned = json.loads(proc.stdout.strip().splitlines()[-1])
    assert pruned["bytes_freed"] > 0 and pruned["packs_deleted"] > 0, json.dumps(pruned)
    assert [p.name for p in Repository.open(repo.backend.location).list_points()] == ["a"]
    deadline = time.monotonic() + 300  # artifacts arrive through the API; this only stops a hang
    while True:
        rows = [
            row
            for artifact in _artifacts("retention-prune")
            for row in (json.loads(artifact.data) if isinstance(artifact.data, str) else [])
        ]
        mine = [r for r in rows if r.get("bytes_freed") == pruned["bytes_freed"]]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert mine, rows
    assert mine[0]["packs_deleted"] == pruned["packs_deleted"]
    assert mine[0]["bytes_held_by_leases"] == 0 and mine[0]["missing_blobs"] == 0
    names = [r.name for r in _flow_runs("retention")]  # a readable run name, from the spec
    assert any(n.startswith(f"retention {repo.backend.location} last=1 ") for n in names), names


def _flow_runs(flow_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def read() -> list[Any]:
        async with get_client() as client:
            return list(await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name]))))

    return asyncio.run(read())
