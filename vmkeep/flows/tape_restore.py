"""Flow ``tape-restore``: the Prefect face of :func:`vmkeep.jobs.tape_restore.tape_restore`;
runs are named ``tape-restore <point> <date>``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.maintenance_specs import TapeRestoreSpec
from vmkeep.jobs.tape_restore import tape_restore as job
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="tape-restore",
    flow_run_name=run_name("tape-restore", TapeRestoreSpec, lambda s: s.point),
    persist_result=False,
    log_prints=False,
)
def tape_restore(spec: TapeRestoreSpec) -> dict[str, Any]:
    """Bring a restore point back from tape (see :mod:`vmkeep.jobs.tape_restore`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, tape_restore)
