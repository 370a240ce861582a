"""Flow ``sweep-snapshots``: the Prefect face of
:func:`vmkeep.jobs.sweep_snapshots.sweep_snapshots`."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.specs import SweepSpec
from vmkeep.jobs.sweep_snapshots import sweep_snapshots as job
from vmkeep.runtime.prefect_runtime import FLOW_RETRIES, register_flow, run_job_in_flow, run_name


@flow(
    name="sweep-snapshots",
    flow_run_name=run_name("sweep-snapshots", SweepSpec, lambda s: s.vcenter.url),
    persist_result=False,
    log_prints=False,
    **FLOW_RETRIES,
)
def sweep_snapshots(spec: SweepSpec) -> dict[str, Any]:
    """Remove leaked vmkeep snapshots (see :mod:`vmkeep.jobs.sweep_snapshots`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, sweep_snapshots)
