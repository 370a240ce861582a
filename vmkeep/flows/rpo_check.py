"""Flow ``rpo-check``: the Prefect face of :func:`vmkeep.jobs.rpo_check.rpo_check` (fails, and
so reports, when a backup name has no restore point younger than the objective)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.maintenance_specs import RpoCheckSpec
from vmkeep.jobs.rpo_check import rpo_check as job
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="rpo-check",
    flow_run_name=run_name("rpo-check", RpoCheckSpec, RpoCheckSpec.label),
    persist_result=False,
    log_prints=False,
)
def rpo_check(spec: RpoCheckSpec) -> dict[str, Any]:
    """Check that every backup name has a restore point younger than ``max_age_hours`` (see
    :mod:`vmkeep.jobs.rpo_check`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, rpo_check)
