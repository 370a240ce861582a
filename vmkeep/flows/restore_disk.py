"""Flow ``restore-disk``: the Prefect face of :func:`vmkeep.jobs.restore_disk.restore_disk`.

Named ``restore-disk <point> disk <n> to <vm> <YYYY-MM-DD HH:MM>``; one
:class:`~vmkeep.jobs.restore_specs.RestoreDiskSpec` parameter (an empty VM name or a negative
disk is refused before the run starts).  No flow retries (see :mod:`vmkeep.flows.restore_vm`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.restore_disk import restore_disk as job
from vmkeep.jobs.restore_specs import RestoreDiskSpec
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="restore-disk",
    flow_run_name=run_name(
        "restore-disk", RestoreDiskSpec, lambda s: f"{s.point} disk {s.disk} to {s.vm}"
    ),
    persist_result=False,
    log_prints=False,
)
def restore_disk(spec: RestoreDiskSpec) -> dict[str, Any]:
    """Restore one disk and attach it to an existing VM (see :mod:`vmkeep.jobs.restore_disk`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, restore_disk)
