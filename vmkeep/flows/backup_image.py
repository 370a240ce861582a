"""Flow ``backup-image``: the Prefect face of :func:`vmkeep.jobs.backup_image.backup_image`."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.backup_image import backup_image as job
from vmkeep.jobs.specs import BackupImageSpec
from vmkeep.runtime.prefect_runtime import FLOW_RETRIES, register_flow, run_job_in_flow, run_name


@flow(
    name="backup-image",
    flow_run_name=run_name("backup-image", BackupImageSpec, lambda s: s.name),
    persist_result=False,
    log_prints=False,
    **FLOW_RETRIES,
)
def backup_image(spec: BackupImageSpec) -> dict[str, Any]:
    """Back up a disk image file (see :mod:`vmkeep.jobs.backup_image`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, backup_image)
