"""Flow ``backup-vms``: the Prefect face of :func:`vmkeep.jobs.backup_vms.backup_vms`; each VM
is a ``backup-vm`` subflow named by the VM."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.flows import backup_vm as _registers_backup_vm  # noqa: F401 - subflow registry
from vmkeep.jobs.backup_vms import NothingSelected, SomeBackupsFailed
from vmkeep.jobs.backup_vms import backup_vms as job
from vmkeep.jobs.specs import BackupVmsSpec
from vmkeep.runtime.prefect_runtime import FLOW_RETRIES, register_flow, run_job_in_flow, run_name

__all__ = ["NothingSelected", "SomeBackupsFailed", "backup_vms"]


@flow(
    name="backup-vms",
    flow_run_name=run_name("backup-vms", BackupVmsSpec, lambda s: s.selection()),
    persist_result=False,
    log_prints=False,
    **FLOW_RETRIES,
)
def backup_vms(spec: BackupVmsSpec) -> dict[str, Any]:
    """Back up every selected VM (see :mod:`vmkeep.jobs.backup_vms`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, backup_vms)
