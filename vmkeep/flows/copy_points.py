"""Flow ``copy``: the Prefect face of :func:`vmkeep.jobs.copy_points.copy_points` (restore points
copied into another repository, one task per point)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.copy_points import copy_points as job
from vmkeep.jobs.maintenance_specs import CopySpec
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="copy",
    flow_run_name=run_name("copy", CopySpec, CopySpec.label),
    persist_result=False,
    log_prints=False,
)
def copy_points(spec: CopySpec) -> dict[str, Any]:
    """Copy restore points from ``spec.from_repo`` into ``spec.repo`` (see
    :mod:`vmkeep.jobs.copy_points`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, copy_points)
