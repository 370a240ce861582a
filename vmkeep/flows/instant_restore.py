"""Flow ``instant-restore``: the Prefect face of
:func:`vmkeep.jobs.instant_restore.instant_restore` (start, attach disks, finalize or cancel a
run)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.instant_restore import InstantRestoreSpec
from vmkeep.jobs.instant_restore import instant_restore as job
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="instant-restore",
    flow_run_name=run_name("instant-restore", InstantRestoreSpec,
                           lambda s: f"{s.action} {s.point or s.run}"
                           + (f" to {s.vm}" if s.action == "disk" else "")),
    persist_result=False,
    log_prints=False,
)
def instant_restore(spec: InstantRestoreSpec) -> dict[str, Any]:
    """Start, finalize or cancel an instant VM recovery, or attach a point's disks to a VM
    (instant disk recovery; see :mod:`vmkeep.jobs.instant_restore`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, instant_restore)
