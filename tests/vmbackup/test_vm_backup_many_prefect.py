"""``backup-vms`` through the real Prefect server of the test session: each VM is a task run of
the one flow run (no subflow per VM), its snapshot carries that task run's id, the run's slots go
back to the server at its end, limits hold, and a crashed or cancelled run's hook removes the
snapshots its VMs left."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from tests.vmbackup.vmbackup_helpers import lab_session, vmkeep_snapshots
from vmkeep.flows.backup_vms import _release_hook, backup_vms
from vmkeep.flows.run import run_flow
from vmkeep.jobs.specs import BackupVmsSpec, build
from vmkeep.runtime import prefect_runtime
from vmkeep.storage.repository import Repository
from vmkeep.tasks import limits
from vmkeep.vsphere import inventory, snapshots

pytestmark = pytest.mark.lab


def _task_runs_by_id(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {str(t.id): t for t in runs}


def test_vms_are_task_runs_of_one_run_and_slots_go_back(
    prefect_api: str, lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    import time

    from prefect.client.orchestration import get_client

    limits.PEAKS.clear()
    result = run_flow(
        backup_vms, True, repo=repo, patterns=["small0[1-4]"], max_parallel=2,
        concurrency={"datastore": 1, "host": 2}, **vc_env,
    )
    assert result["failed"] == 0 and len(result["vms"]) == 4
    assert max(v for k, v in limits.PEAKS.items() if "-datastore-" in k) == 1
    assert vmkeep_snapshots(lab) == []

    # every slot this run took is back on the server
    with get_client(sync_client=True) as client:
        for name in [k for k in limits.PEAKS if k.startswith("vmkeep-")]:
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 0, name

    # each VM's snapshot was named by a task run of the one backup-vms flow run
    repository = Repository.open(repo)
    run_ids = {
        repository.load_point(vm["id"]).meta["snapshot"].removeprefix(snapshots.PREFIX)
        for vm in result["vms"]
    }
    assert len(run_ids) == 4
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    assert not [r for r in runs if r.name.startswith("backup-vm small")]  # no subflow per VM
    [parent_run] = [r for r in runs if r.name.startswith("backup-vms patterns=['small0[1-4]']")]
    deadline = time.monotonic() + 300  # only stops a hang on a loaded machine
    while True:  # task runs reach the server through events
        by_id = _task_runs_by_id(parent_run.id)
        if run_ids <= set(by_id) or time.monotonic() > deadline:
            break
        time.sleep(1)
    names = sorted(by_id[r].name for r in run_ids)
    assert [n.split()[:2] for n in names] == [["backup-vm", f"small0{i}"] for i in range(1, 5)]
    assert any(t.name == "small01: snapshot" for t in by_id.values())


def test_crash_hook_removes_the_snapshots_of_the_runs_vms(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    parent, child = str(uuid.uuid4()), str(uuid.uuid4())
    with lab_session(lab) as session:
        vm = next(v for v in inventory.list_vms(session) if v.name == "small05")
        snapshots.create_snapshot(session, vm.ref, child, quiesce=False)
    assert vmkeep_snapshots(lab)
    prefect_runtime._CHILD_RUNS.setdefault(parent, set()).add(child)  # as _run_child records it
    spec = build(BackupVmsSpec, dict(repo=repo, names=["small05"], **vc_env))
    flow_run = SimpleNamespace(id=parent, parameters={"spec": spec.model_dump()})
    _release_hook(None, flow_run, None)
    assert vmkeep_snapshots(lab) == []
