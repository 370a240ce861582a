"""Flow: the snapshot sweep — remove vmkeep snapshots that outlived their run (Snapshot Hunter).

A run killed with -9, a host that was down at release time, a failed removal: whatever the cause,
a snapshot named ``vmkeep-<run id>`` with vmkeep's marker whose run is no longer active and
that is older than ``older_than_minutes`` is removed, disks consolidated where vSphere asks for
it.  Snapshots without both the name prefix and the marker are never touched.  Run hourly from a
deployment; ``active_runs`` defaults to the vmkeep runs Prefect reports as running.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from vmkeep.tasks.runtime import NO_CACHE, direct_mode, flow, publish_table, step, task
from vmkeep.tasks.vcenter import VCenter, open_session
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.snapshots import sweep_snapshots as sweep


def running_vmkeep_runs() -> set[str]:
    """Ids of backup-vm flow runs Prefect considers running (empty in direct mode)."""
    if direct_mode():
        return set()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    states = [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))
            )
        )
    return {str(r.id) for r in runs}


@task(name="sweep-vcenter", cache_policy=NO_CACHE, persist_result=False)
def sweep_task(session: Session, older_than: timedelta, active: set[str]) -> dict[str, Any]:
    report = sweep(session, older_than, active)
    return {
        "removed": [f"{s.vm_name}: {s.name}" for s in report.removed],
        "failed": [f"{s.vm_name}: {s.name}: {why}" for s, why in report.failed],
        "kept": [f"{s.vm_name}: {s.name}" for s in report.kept],
    }


@flow(name="sweep-snapshots", persist_result=False, log_prints=False)
def sweep_snapshots(
    vcenter: str,
    user: str | None = None,
    password_file: str | None = None,
    password_block: str | None = None,
    cafile: str | None = None,
    thumbprint: str | None = None,
    insecure: bool = False,
    older_than_minutes: float = 60.0,
    active_runs: list[str] | None = None,
) -> dict[str, Any]:
    """Remove leaked vmkeep snapshots; returns what was removed, kept and what failed."""
    target = VCenter(vcenter, user, password_file, password_block, cafile, thumbprint, insecure)
    active = set(active_runs) if active_runs is not None else running_vmkeep_runs()
    session = open_session(target)
    try:
        result = step(sweep_task, session, timedelta(minutes=older_than_minutes), active)
    finally:
        session.close()
    rows = [{"snapshot": s, "action": "removed"} for s in result["removed"]] + [
        {"snapshot": s, "action": "FAILED"} for s in result["failed"]
    ]
    if rows:
        publish_table("snapshot-sweep", rows, "Leaked vmkeep snapshots")
    return result
