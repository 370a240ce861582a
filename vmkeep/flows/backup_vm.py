"""Flow ``backup-vm``: the Prefect face of :func:`vmkeep.jobs.backup_vm.backup_vm`.

The run is named ``backup-vm <vm> <YYYY-MM-DD HH:MM>``; its parameter is one
:class:`~vmkeep.jobs.specs.BackupVmSpec` (a form in the UI; an empty VM name is refused before
the run starts).  Crashed or cancelled runs release *their own* snapshot from the hooks; the
snapshot sweep handles what no hook saw.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Completed

from vmkeep.jobs.backup_vm import backup_vm as job
from vmkeep.jobs.specs import BackupVmSpec
from vmkeep.runtime.prefect_runtime import FLOW_RETRIES, register_flow, run_job_in_flow, run_name
from vmkeep.tasks.vcenter import open_session


def _spec_param(params: dict[str, Any]) -> BackupVmSpec:
    spec = params["spec"]
    return spec if isinstance(spec, BackupVmSpec) else BackupVmSpec.model_validate(spec)


def _release_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """Crashed/cancelled run: detach the disks *this run* hot-added to a mover VM, then remove
    *its* snapshot if it is still there.

    Only the disks and the snapshot whose markers name this flow run are touched — other runs'
    are theirs to release (or the sweep's, once their runs are over).
    """
    from vmkeep.vsphere.hotadd import detach_run
    from vmkeep.vsphere.snapshots import find_vmkeep_snapshots, remove_snapshot

    run_id = str(flow_run.id)
    try:
        session = open_session(_spec_param(dict(flow_run.parameters or {})).vcenter)
    except Exception:
        return
    try:
        detach_run(session, run_id)  # vSphere cannot consolidate what a mover still holds
        for snap, marker in find_vmkeep_snapshots(session):
            if marker.run_id == run_id:
                remove_snapshot(session, snap.vm, snap.ref, snap.name)
    except Exception:
        pass
    finally:
        session.close()


@flow(
    name="backup-vm",
    flow_run_name=run_name("backup-vm", BackupVmSpec, lambda spec: spec.vm),
    persist_result=False,
    log_prints=False,
    **FLOW_RETRIES,
    on_crashed=[_release_hook],
    on_cancellation=[_release_hook],
)
def backup_vm(spec: BackupVmSpec) -> dict[str, Any]:
    """Back up one VM (see :mod:`vmkeep.jobs.backup_vm`); returns the run summary.

    When the snapshot could not be released, the run still completes (the restore point is
    good) but its state message names the snapshot and when the sweep removes it.
    """
    result: Any = run_job_in_flow(job, spec)
    if isinstance(result, dict) and result.get("snapshot_left"):
        return Completed(message=result["snapshot_left"], data=result)  # type: ignore[return-value]
    return result


register_flow(job, backup_vm)
