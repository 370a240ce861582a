"""Flow ``backup-vms``: the Prefect face of :func:`vmkeep.jobs.backup_vms.backup_vms`; each VM
is a task run named ``backup-vm <VM> <time>`` whose steps (``<VM>: snapshot``, ``<VM>: disk 0
[ds1] <VM>/<VM>.vmdk``…) are nested task runs.

The flow run's heartbeat covers every VM: a child's snapshot carries its task run's id, which
the snapshot sweep counts as active only while this flow run is (``PrefectRuntime.active_run_ids``).
A crashed or cancelled run releases its children's snapshots and hot-added disks from its hooks.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.flows import backup_vm as _registers_backup_vm  # noqa: F401 - child registry
from vmkeep.jobs.backup_vms import NothingSelected, SomeBackupsFailed
from vmkeep.jobs.backup_vms import backup_vms as job
from vmkeep.jobs.specs import BackupVmsSpec
from vmkeep.runtime.prefect_runtime import (
    FLOW_RETRIES,
    child_run_ids,
    register_flow,
    run_job_in_flow,
    run_name,
)
from vmkeep.tasks.vcenter import open_session

__all__ = ["NothingSelected", "SomeBackupsFailed", "backup_vms"]


def release_runs(spec: BackupVmsSpec, run_ids: set[str]) -> list[str]:
    """Detach the disks runs ``run_ids`` hot-added to a mover, then remove *their* snapshots
    (by marker); returns the snapshots removed.  Best effort: the sweep does the rest."""
    from vmkeep.vsphere.hotadd import detach_run
    from vmkeep.vsphere.snapshots import find_vmkeep_snapshots, remove_snapshot

    removed: list[str] = []
    session = open_session(spec.vcenter)
    try:
        for run_id in run_ids:
            detach_run(session, run_id)  # vSphere cannot consolidate what a mover still holds
        for snap, marker in find_vmkeep_snapshots(session):
            if marker.run_id in run_ids:
                remove_snapshot(session, snap.vm, snap.ref, snap.name)
                removed.append(snap.name)
    finally:
        session.close()
    return removed


def _release_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """Crashed/cancelled run: release what this run's VM backups hold (see :func:`release_runs`)."""
    run_id = str(flow_run.id)
    try:
        spec = (flow_run.parameters or {})["spec"]
        spec = spec if isinstance(spec, BackupVmsSpec) else BackupVmsSpec.model_validate(spec)
        release_runs(spec, {run_id} | child_run_ids(run_id))
    except Exception:
        pass


@flow(
    name="backup-vms",
    flow_run_name=run_name("backup-vms", BackupVmsSpec, lambda s: s.selection()),
    persist_result=False,
    log_prints=False,
    **FLOW_RETRIES,
    on_crashed=[_release_hook],
    on_cancellation=[_release_hook],
)
def backup_vms(spec: BackupVmsSpec) -> dict[str, Any]:
    """Back up every selected VM (see :mod:`vmkeep.jobs.backup_vms`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, backup_vms)
