"""``vmkeep backup vm --tag CATEGORY:TAG``: VMs chosen by the lab's vSphere tags (vAPI tagging
service); a tag attached to no VM, or unknown, fails with a typed error before any snapshot."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env
from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots
from vmkeep.jobs.specs import BackupVmsSpec
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab


def _backup(vc_env: dict[str, Any], repo: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(PREFECT_API_URL="", VMKEEP_REPO=repo)
    return subprocess.run(
        [*VMKEEP, "backup", "vm", *args, "--vcenter", vc_env["vcenter"], "--cafile",
         vc_env["cafile"], "--json", "--no-prefect"],
        env=env, capture_output=True, text=True,
    )


def test_backup_by_tag_backs_up_exactly_the_tagged_vms(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    out = _backup(vc_env, repo, "--tag", "backup-policy:silver")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [r["vm"] for r in result] == ["small06"]
    [point] = Repository.open(repo).list_points()
    assert point.id == result[0]["id"]
    assert not vmkeep_snapshots(lab)


def test_tag_on_no_vm_or_unknown_tag_is_an_error_not_an_empty_success(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    out = _backup(vc_env, repo, "--tag", "backup-policy:unused")
    assert out.returncode == 14, out.stdout + out.stderr
    assert "'backup-policy:unused' is attached to no VM" in out.stderr
    assert "Traceback" not in out.stderr
    out = _backup(vc_env, repo, "--tag", "backup-policy:platinum")
    assert out.returncode == 14 and "no tag 'platinum'" in out.stderr
    # Names and a tag narrow each other: small05 is gold, not silver.
    out = _backup(vc_env, repo, "small05", "--tag", "backup-policy:silver")
    assert out.returncode == 14 and "No VM matches" in out.stderr
    assert Repository.open(repo).list_points() == []
    assert not vmkeep_snapshots(lab)


def test_a_deployments_unset_tag_variable_means_no_tag() -> None:
    spec = BackupVmsSpec(vcenter="https://vc", repo="/r", patterns=["*"], tag="")
    assert spec.tag is None
    assert BackupVmsSpec(vcenter="https://vc", repo="/r", tag="env:prod").tag == "env:prod"


def test_the_backup_vms_flow_takes_the_tag_under_prefect(
    prefect_api: str, lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async def runs(prefix: str) -> list[Any]:
        async with get_client() as client:
            return list(await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=prefix))))

    env = cli_env(PREFECT_API_URL=prefect_api, VMKEEP_REPO=repo)
    conn = ["--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"], "--json"]
    ok = subprocess.run([*VMKEEP, "backup", "vm", "--tag", "backup-policy:silver", *conn],
                        env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert [r["vm"] for r in json.loads(ok.stdout)] == ["small06"]
    [flow_run] = asyncio.run(runs("backup-vms tag=backup-policy:silver"))
    assert flow_run.state_type.value == "COMPLETED"
    assert flow_run.parameters["spec"]["tag"] == "backup-policy:silver"
    bad = subprocess.run([*VMKEEP, "backup", "vm", "--tag", "backup-policy:unused", *conn],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 14 and "attached to no VM" in bad.stderr
    [failed] = asyncio.run(runs("backup-vms tag=backup-policy:unused"))
    assert failed.state_type.value == "FAILED"


def test_vms_carrying_an_exclusion_tag_are_left_out(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    """``--exclude-tag``: gold is small05 and small06; silver (small06) leaves small05.  A tag
    on no VM leaves nothing out; an unknown one is an error before any snapshot."""
    out = _backup(vc_env, repo, "small05", "small06", "--exclude-tag", "backup-policy:silver")
    assert out.returncode == 0, out.stderr
    assert [r["vm"] for r in json.loads(out.stdout)] == ["small05"]
    out = _backup(vc_env, repo, "small05", "--exclude-tag", "backup-policy:unused")
    assert out.returncode == 0, out.stderr
    assert [r["vm"] for r in json.loads(out.stdout)] == ["small05"]
    out = _backup(vc_env, repo, "small05", "--exclude-tag", "backup-policy:platinum")
    assert out.returncode == 14 and "no tag 'platinum'" in out.stderr
    out = _backup(vc_env, repo, "--tag", "backup-policy:gold", "--exclude-tag",
                  "backup-policy:gold")
    assert out.returncode == 14 and "exclude_tag=backup-policy:gold" in out.stderr
    assert [p.meta["vm_name"] for p in Repository.open(repo).list_points()] == [
        "small05", "small05"]
    assert not vmkeep_snapshots(lab)
