"""Flow ``tape-copy``: the Prefect face of :func:`vmkeep.jobs.tape_copy.tape_copy`; runs are
named ``tape-copy pool=<pool> <date>``.  Not retried as a whole: a copy cut short leaves
cartridges and catalog consistent, and the next nightly run copies what is missing."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.maintenance_specs import TapeCopySpec
from vmkeep.jobs.tape_copy import tape_copy as job
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="tape-copy",
    flow_run_name=run_name("tape-copy", TapeCopySpec, lambda s: f"pool={s.pool}"),
    persist_result=False,
    log_prints=False,
)
def tape_copy(spec: TapeCopySpec) -> dict[str, Any]:
    """Copy restore points to a tape pool (see :mod:`vmkeep.jobs.tape_copy`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, tape_copy)
