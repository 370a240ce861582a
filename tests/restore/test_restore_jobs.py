"""The restore jobs (issue 19): run by a ``LocalRuntime`` they report through the runtime and
close their progress also on failure; run as flows through a real Prefect server, an expected
error ends the run with one line and no traceback, the run named by the point and the target."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env
from vmkeep.flows.backup_image import backup_image
from vmkeep.flows.run import run_flow
from vmkeep.jobs import specs
from vmkeep.jobs.restore_image import restore_image
from vmkeep.jobs.restore_specs import RestoreImageSpec
from vmkeep.runtime import LocalRuntime
from vmkeep.runtime.base import Progress
from vmkeep.storage.repository import Repository


class Recorded:
    """A progress sink that fails after ``fail_after`` bytes and records how it was closed."""

    def __init__(self, fail_after: int | None) -> None:
        self.fail_after, self.done, self.closed = fail_after, 0, []  # type: list[bool]

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.fail_after is not None and self.done > self.fail_after:
            raise OSError("mover lost its disk")

    def close(self, failed: bool = False) -> None:
        self.closed.append(failed)


class RecordingRuntime(LocalRuntime):
    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(retry_delay_scale=0.0)
        self.fail_after = fail_after
        self.bars: list[Recorded] = []

    def progress(self, description: str, total: int) -> Progress:
        self.bars.append(Recorded(self.fail_after))
        return self.bars[-1]


@pytest.fixture
def image_point(tmp_path: Path) -> tuple[str, bytes]:
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=64 * 1024)
    data = os.urandom(1 << 20) + bytes(1 << 20)
    img = tmp_path / "disk.img"
    img.write_bytes(data)
    run_flow(backup_image, False, repo=str(repo), path=str(img), name="disk")
    return str(repo), data


def test_restore_reports_through_the_runtime(image_point, tmp_path):
    repo, data = image_point
    rt = RecordingRuntime()
    out = tmp_path / "out.raw"
    spec = specs.build(RestoreImageSpec, {"repo": repo, "point": "disk@latest",
                                          "target": str(out)})
    summary = restore_image(spec, rt)
    assert out.read_bytes() == data and summary["bytes"] == len(data)
    assert [b.closed for b in rt.bars] == [[False]] and rt.bars[0].done == len(data)
    assert [(key, kind) for key, kind, _ in rt.reports] == [("restore-image", "table")]


def test_progress_is_closed_as_failed_when_the_restore_fails(image_point, tmp_path):
    repo, _ = image_point
    rt = RecordingRuntime(fail_after=256 * 1024)
    spec = specs.build(RestoreImageSpec, {"repo": repo, "point": "disk@latest",
                                          "target": str(tmp_path / "out.raw")})
    with pytest.raises(OSError, match="mover lost"):
        restore_image(spec, rt)
    assert [b.closed for b in rt.bars] == [[True]]
    assert not (tmp_path / "out.raw").exists()  # the image appears only when complete
    assert rt.reports == []


def test_a_failed_restore_run_in_prefect_is_one_line(prefect_api, image_point, tmp_path):
    """``restore image`` of a missing point through Prefect: exit 14, one line, no traceback;
    the run is ``Failed`` with that line, named by the point, the disk and the target."""
    repo, _ = image_point
    env = cli_env(PREFECT_API_URL=prefect_api, VMKEEP_REPO=repo)
    target = tmp_path / "never.raw"
    done = subprocess.run([*VMKEEP, "restore", "image", "deadbeef", "--to", str(target)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 14, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "deadbeef" in done.stderr, done.stderr[-3000:]
    assert not target.exists()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async def runs() -> list[Any]:
        async with get_client() as client:
            return list(await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(like_=f"restore-image deadbeef disk 0 to {target}"))))

    deadline = time.monotonic() + 300  # only stops a hang: the state is set before the exit
    while not (found := asyncio.run(runs())) and time.monotonic() < deadline:
        time.sleep(1)
    assert len(found) == 1 and found[0].state_type.value == "FAILED"
    assert "deadbeef" in (found[0].state.message or "")
    assert "Traceback" not in (found[0].state.message or "")


STREAM_IN_PREFECT = """
import sys
from vmkeep.flows.restore_image import restore_image
from vmkeep.flows.run import run_flow
from vmkeep.jobs.specs import InvalidSpec
try:
    run_flow(restore_image, orchestrate=True, repo=sys.argv[1], point="disk@latest", target="-")
except InvalidSpec as exc:
    sys.stderr.write(f"refused: {exc}\\n")
    sys.exit(3)
"""


def test_a_stream_restore_is_refused_in_a_prefect_run(prefect_api, image_point):
    """Target ``-`` in an orchestrated run (a deployment or the flow called with Prefect) would
    pour the disk into a worker's log: refused before anything is read."""
    repo, data = image_point
    done = subprocess.run(
        [sys.executable, "-c", STREAM_IN_PREFECT, repo], env=cli_env(PREFECT_API_URL=prefect_api),
        capture_output=True, timeout=900,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert b"refused: Invalid restore image spec: target - streams" in done.stderr
    assert data[:4096] not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["disk", "p", "--disk", "0", "--vm", "web01"], "restore disk needs --vcenter"),
        (["vm", "p"], "restore vm needs --vcenter"),
        (["files", "p:p1/etc", "--to-guest", "web01:/srv"], "--to-guest needs --vcenter"),
        (["vm", "p", "--vcenter", "vc", "--insecure", "--cafile", "/ca.pem"],
         "insecure cannot be combined with cafile or thumbprint"),
        (["disk", "p", "--disk", "-1", "--vm", "web01", "--vcenter", "vc"],
         "--disk must be 0 or more"),
    ],
)
def test_the_restore_verbs_share_one_vcenter_option_group(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """One option group (``--vcenter`` … ``--insecure``) for restore vm, disk and files: the same
    checks, usage errors (exit 2) before anything is opened."""
    from tests.restore.restore_helpers import run_cli

    code, _, err = run_cli("restore", *args, repo=tmp_path / "repo")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "repo").exists()


def test_the_vcenter_option_group_is_in_every_restore_verb_help() -> None:
    from typer.testing import CliRunner

    from vmkeep.cli.main import app

    for verb in ("vm", "disk", "files"):
        out = CliRunner().invoke(app, ["restore", verb, "--help"], terminal_width=200).output
        for option in ("--vcenter", "--user", "--password-file", "--password-block", "--cafile",
                       "--thumbprint", "--insecure"):
            assert option in out, (verb, option)


@pytest.mark.lab
def test_a_vm_restore_run_in_prefect_is_named_by_vm_and_disk(
    prefect_api: str, esx_lab: Any, tmp_path: Path
) -> None:
    """``restore vm --prefect``: the run is ``restore-vm <name> <point> …``, its tasks
    ``import VM <name>``, ``disk 0 [ds] …`` and ``finish <name>``; the report is an artifact."""
    import json

    from tests.restore.test_restore_lab import SOURCE_VM, destroy_vm

    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    env = cli_env(PREFECT_API_URL=prefect_api, VMKEEP_REPO=str(repo),
                  VMKEEP_VC_USER=esx_lab.user, VMKEEP_VC_PASSWORD=esx_lab.password)
    conn = ["--vcenter", esx_lab.url, "--cafile", esx_lab.cafile, "--json"]
    backup = subprocess.run([*VMKEEP, "backup", "vm", SOURCE_VM, "--no-quiesce", "--no-prefect",
                             *conn], env=env, capture_output=True, text=True, timeout=900)
    assert backup.returncode == 0, backup.stderr[-3000:]
    point = json.loads(backup.stdout)["id"][:12]
    name = "small06-prefect"
    try:
        done = subprocess.run([*VMKEEP, "restore", "vm", point, "--name", name, "--datastore",
                               "datastore2", "--prefect", *conn], env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["vm"] == name
    finally:
        destroy_vm(esx_lab, name)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
    )

    async def inspect() -> tuple[list[Any], set[str], set[str]]:
        async with get_client() as client:
            runs = list(await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(like_=f"restore-vm {name} {point} "))))
            if len(runs) != 1:
                return runs, set(), set()
            ids = FlowRunFilterId(any_=[runs[0].id])
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=ids))
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
        return runs, {t.name for t in tasks}, {a.key or "" for a in artifacts}

    deadline = time.monotonic() + 300  # task runs arrive through events; only stops a hang
    while True:
        runs, tasks, artifacts = asyncio.run(inspect())
        if (f"finish {name}" in tasks and artifacts) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(runs) == 1 and runs[0].state_type.value == "COMPLETED"
    assert {f"import VM {name}", f"finish {name}"} <= tasks, tasks
    assert any(t.startswith("disk 0 [datastore2] ") for t in tasks), tasks
    assert f"restore-vm-{name}" in artifacts, artifacts
