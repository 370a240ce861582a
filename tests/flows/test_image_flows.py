"""Image backup and restore flows through a real Prefect server: runs, tasks and artifacts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from vmkeep.flows.backup_image import backup_image
from vmkeep.flows.restore_image import restore_image
from vmkeep.storage.repository import Repository
from vmkeep.tasks.runtime import run_flow


def test_image_flows_are_visible_in_prefect(prefect_api: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=64 * 1024)
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(1 << 20) + bytes(1 << 20))

    summary = run_flow(backup_image, True, repo=str(repo), path=str(img), name="disk")
    assert summary["mode"] == "full"
    out = tmp_path / "out.img"
    run_flow(restore_image, True, repo=str(repo), point="disk@latest", target=str(out))
    assert out.read_bytes() == img.read_bytes()

    from prefect.client.orchestration import get_client

    async def inspect() -> tuple[list[str], list[str], list[str]]:
        async with get_client() as client:
            flows = await client.read_flow_runs()
            tasks = await client.read_task_runs()
            artifacts = await client.read_artifacts()
        return (
            [f"{r.name}:{r.state_type.value}" for r in flows],
            sorted({t.name.rsplit("-", 1)[0] for t in tasks}),
            [a.key or "" for a in artifacts],
        )

    flows, tasks, artifacts = asyncio.run(inspect())
    assert sum(s.endswith("COMPLETED") for s in flows) >= 2
    assert {"back-up-image-disk", "commit-restore-point", "restore-image-disk"} <= set(tasks)
    assert "backup-image" in artifacts


def test_direct_mode_needs_no_server(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(300_000))
    summary = run_flow(backup_image, False, repo=str(repo), path=str(img), name="d")
    assert summary["bytes_read"] == 300_000
