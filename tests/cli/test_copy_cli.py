"""``vmkeep copy`` as users run it: passwords from the environment (never argv), ``--json``, exit
codes and one-line errors without tracebacks, the copy restored with the CLI; and the ``copy``
flow through a real Prefect server (one task per point, a readable run name)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.run_cli import VMKEEP, cli_env


def vmkeep(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_") or k in (
        "VMKEEP_STATE_DIR", "VMKEEP_CONFIG_DIR")}
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, timeout=600,
                          env=cli_env(base, **{"PREFECT_API_URL": "", **env}))


def test_copy_cli_encrypted_to_plain_json_exit_codes(tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(300_000) + bytes(2_000_000))
    assert vmkeep("init", "--encrypt", "--repo", src, VMKEEP_PASSWORD="s3cret").returncode == 0
    assert vmkeep("init", "--repo", dst).returncode == 0
    done = vmkeep("backup", "image", str(image), "--name", "web01", "--repo", src,
                  VMKEEP_PASSWORD="s3cret")
    assert done.returncode == 0, done.stderr

    missing = vmkeep("copy", "--repo", dst)
    assert missing.returncode == 2 and "--from-repo" in missing.stderr
    no_password = vmkeep("copy", "--repo", dst, "--from-repo", src)
    assert no_password.returncode == 12, no_password.stderr
    assert "VMKEEP_FROM_PASSWORD" in no_password.stderr and "Traceback" not in no_password.stderr
    wrong = vmkeep("copy", "--repo", dst, "--from-repo", src, VMKEEP_FROM_PASSWORD="nope")
    assert wrong.returncode == 12 and "Traceback" not in wrong.stderr, wrong.stderr

    copied = vmkeep("copy", "--repo", dst, "--json", VMKEEP_FROM_REPO=src,
                    VMKEEP_FROM_PASSWORD="s3cret")
    assert copied.returncode == 0, copied.stderr
    summary = json.loads(copied.stdout)
    [row] = summary["copied"]
    assert row["name"] == "web01" and row["kind"] == "image" and summary["skipped"] == 0
    assert "s3cret" not in copied.stdout + copied.stderr
    # allowed (the destination's keys decide), never silent: the copy is plaintext there
    assert summary["warnings"] == [f"{dst} is not encrypted: the copies of the encrypted "
                                   f"{src} are stored there in plaintext"]
    assert "is not encrypted" in copied.stderr

    out = tmp_path / "restored.img"
    restored = vmkeep("restore", "image", "web01@latest", "--repo", dst, "--to", str(out))
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == image.read_bytes()

    again = vmkeep("copy", "--repo", dst, "--from-repo", src, VMKEEP_FROM_PASSWORD="s3cret")
    assert again.returncode == 0 and "0 restore point(s) copied, 1 already there" in again.stderr
    assert vmkeep("check", "--repo", dst, "--read-data").returncode == 0


def _flow_runs(flow_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )

    async def read() -> list[Any]:
        async with get_client() as client:
            runs = list(await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name]))))
            out = []
            for r in runs:
                tasks = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id])))
                out.append((r, [t.name for t in tasks]))
            return out

    return asyncio.run(read())


def test_copy_runs_as_a_flow_with_a_task_per_point(prefect_api: str, tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(200_000))
    env = {"PREFECT_API_URL": prefect_api}
    assert vmkeep("init", "--repo", src).returncode == 0
    assert vmkeep("init", "--repo", dst).returncode == 0
    for name in ("web01", "db01"):
        assert vmkeep("backup", "image", str(image), "--name", name, "--repo", src).returncode == 0

    done = vmkeep("copy", "--repo", dst, "--from-repo", src, "--prefect", "--json", **env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(r["name"] for r in json.loads(done.stdout)["copied"]) == ["db01", "web01"]
    [(run, tasks)] = [(r, t) for r, t in _flow_runs("copy") if src in r.name]
    assert run.name.startswith(f"copy from {src} ")
    assert run.state_type.value == "COMPLETED"
    copies = sorted(t for t in tasks if t.startswith("copy "))
    assert len(copies) == 2 and any("web01" in t for t in copies), tasks


def test_a_second_copy_of_one_source_into_one_destination_waits_then_exits_11(
    tmp_path: Path,
) -> None:
    """Not only under Prefect's slot: whatever started them, two copies of one source into one
    destination never run at once (they would both copy a missing point); another source's
    copy into the same destination is not held up."""
    from vmkeep.jobs.copy_points import copy_mutex
    from vmkeep.storage.repository import Repository

    src, other, dst = (str(tmp_path / n) for n in ("src", "other", "dst"))
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(100_000))
    for repo in (src, other, dst):
        assert vmkeep("init", "--repo", repo).returncode == 0
    for repo in (src, other):
        assert vmkeep("backup", "image", str(image), "--name", "web01", "--repo", repo
                      ).returncode == 0
    source, dest = Repository.open(src), Repository.open(dst)
    with dest.lock("shared", mutex=copy_mutex(source.config.id), command="copy (elsewhere)"):
        held = vmkeep("copy", "--repo", dst, "--from-repo", src, VMKEEP_LOCK_WAIT="0")
        assert held.returncode == 11 and "Traceback" not in held.stderr, held.stderr
        assert "copy (elsewhere)" in held.stderr
        assert vmkeep("copy", "--repo", dst, "--from-repo", other).returncode == 0
    done = vmkeep("copy", "--repo", dst, "--from-repo", src, "--json", VMKEEP_LOCK_WAIT="0")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["copied"]) == 1
