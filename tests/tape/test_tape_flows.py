"""The tape-copy flow through a real Prefect server: licence check first, the copy task, the
report artifacts, the drive and changer concurrency limits and a readable run name."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from tests.licensing.licensing_devkeys import DEV_PUBLIC
from tests.storage.storage_helpers import backup, write_image
from tests.support.run_cli import VMKEEP, cli_env
from tests.tape.vtl_helpers import configure
from vmkeep.storage.repository import Repository

DEV_LICENCE = Path(DEV_PUBLIC).with_name("dev_licence.json")


def test_tape_copy_flow_runs_in_prefect_with_artifacts(
    prefect_api: str, vtl, tape_dir: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    configure(vtl).close()
    repo = Repository.init(str(tmp_path / "repo"))
    point, _ = backup(repo, write_image(tmp_path / "d.img", size=1024 * 1024))
    env = cli_env(PREFECT_API_URL=prefect_api, VMKEEP_TAPE_DIR=str(tape_dir),
                  VMKEEP_LICENSE=str(DEV_LICENCE))
    r = subprocess.run([*VMKEEP, "tape", "copy", point.id[:12],
                        "--repo", str(tmp_path / "repo"), "-l", "lab", "--pool", "daily",
                        "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
    )

    async def inspect() -> tuple[list[str], list[str], list[str]]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["tape-copy"]))
            )
            # filtered: the session's server holds every other test's artifacts and limits
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["vmkeep-tape-copy", "vmkeep-tape-copy-report",
                                            "vmkeep-licence-report"])))
            limits = await client.read_global_concurrency_limits(limit=200)
        return ([x.state_type.value for x in runs], [a.key or "" for a in artifacts],
                [g.name for g in limits])

    deadline = time.monotonic() + 300  # artifacts arrive through the API; only stops a hang
    while True:
        states, artifacts, limits = asyncio.run(inspect())
        if "vmkeep-tape-copy-report" in artifacts or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "COMPLETED" in states
    assert {"vmkeep-tape-copy", "vmkeep-tape-copy-report", "vmkeep-licence-report"} <= set(
        artifacts)
    # the drive limit and the changer's, both held through the runtime (rt.slots)
    assert {"vmkeep-tape-lab", "vmkeep-tape-changer-lab"} <= set(limits)
    names = asyncio.run(_run_names("tape-copy"))
    assert any(n.startswith("tape-copy pool=daily ") for n in names), names


async def _run_names(flow_name: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
    return [r.name for r in runs]


def test_tape_copy_nightly_deployment_matches_the_flow() -> None:
    import importlib
    import inspect

    import yaml

    from vmkeep.deployments.pools import PREFECT_FILE, VARIABLE_DEFAULTS

    doc = yaml.safe_load(PREFECT_FILE.read_text())
    copies = {d["name"]: d for d in doc["deployments"] if d["entrypoint"].endswith(":tape_copy")}
    assert set(copies) == {"nightly", "gfs-weekly", "gfs-monthly"}
    assert {n: (d["parameters"]["spec"]["pool"], d["parameters"]["spec"].get("latest", False))
            for n, d in copies.items()} == {"nightly": ("daily", False),
                                            "gfs-weekly": ("weekly", True),
                                            "gfs-monthly": ("monthly", True)}
    assert all(not s.get("active", True) for d in copies.values() for s in d["schedules"])
    dep = copies["nightly"]
    module, name = dep["entrypoint"].split(":")
    flow_obj = getattr(importlib.import_module(module), name)
    params = inspect.signature(getattr(flow_obj, "fn", flow_obj)).parameters
    assert set(dep["parameters"]) <= set(params)
    assert flow_obj.name == "tape-copy" and dep["name"] == "nightly"  # tape-copy/nightly
    assert dep["work_pool"]["name"] == "vmkeep-san"
    assert "vmkeep_tape_library" in VARIABLE_DEFAULTS
    assert all(not s.get("active", True) for s in dep["schedules"])  # opt-in
