"""Image backup and restore flows through a real Prefect server: runs, tasks and artifacts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from vmkeep.flows.backup_image import backup_image
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository


def test_image_flows_are_visible_in_prefect(prefect_api: str, tmp_path: Path) -> None:
    """The CLI, pointed at a Prefect API, runs the flows there: runs, task runs, artifacts.

    The backup and restore run as separate ``vmkeep`` processes, as a user would run them (and
    so that Prefect's process-wide event client belongs to this server).
    """
    import subprocess
    import sys
    import time

    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=64 * 1024)
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(1 << 20) + bytes(1 << 20))
    env = dict(os.environ, PREFECT_API_URL=prefect_api, VMKEEP_REPO=str(repo))
    cli = [sys.executable, "-m", "tests.support.run_cli"]
    backup = subprocess.run([*cli, "backup", "image", str(img), "--name", "disk", "--json"],
                            env=env, capture_output=True, text=True)
    assert backup.returncode == 0, backup.stderr
    out = tmp_path / "out.img"
    restore = subprocess.run([*cli, "restore", "image", "disk@latest", "--to", str(out)],
                             env=env, capture_output=True, text=True)
    assert restore.returncode == 0, restore.stderr
    assert out.read_bytes() == img.read_bytes()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
        TaskRunFilter,
        TaskRunFilterName,
    )

    # task runs are named by what they do: "disk 0 <path>" for the image read, "disk 0 to
    # <target>" for the restore
    wanted = {"disk 0 ", "commit-restore-point", f"disk 0 to {out}"}

    async def inspect() -> tuple[list[str], set[str], list[str]]:
        async with get_client() as client:
            flows = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["backup-image", "restore-image"]))
            )
            seen: set[str] = set()
            for name in wanted:  # task runs are recorded from events: filter, don't page
                runs = await client.read_task_runs(
                    task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name))
                )
                seen |= {name for r in runs if r.name.startswith(name)}
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["backup-image", "restore-image"])))
        return [r.state_type.value for r in flows], seen, [a.key or "" for a in artifacts]

    deadline = time.monotonic() + 300  # events reach the server later; only stops a hang
    while True:
        states, tasks, artifacts = asyncio.run(inspect())
        if wanted <= tasks or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert states.count("COMPLETED") >= 2
    assert wanted <= tasks
    assert {"backup-image", "restore-image"} <= set(artifacts)


def test_direct_mode_needs_no_server(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(300_000))
    summary = run_flow(backup_image, False, repo=str(repo), path=str(img), name="d")
    assert summary["bytes_read"] == 300_000
