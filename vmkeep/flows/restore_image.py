"""Flow ``restore-image``: the Prefect face of :func:`vmkeep.jobs.restore_image.restore_image`.

Named ``restore-image <point> disk <n> to <target> <YYYY-MM-DD HH:MM>``; one
:class:`~vmkeep.jobs.restore_specs.RestoreImageSpec` parameter (an empty target or an unknown
format is refused before the run starts).  No flow retries.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.restore_image import restore_image as job
from vmkeep.jobs.restore_specs import RestoreImageSpec
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="restore-image",
    flow_run_name=run_name(
        "restore-image", RestoreImageSpec, lambda s: f"{s.point} disk {s.disk} to {s.target}"
    ),
    persist_result=False,
    log_prints=False,
)
def restore_image(spec: RestoreImageSpec) -> dict[str, Any]:
    """Write one disk of a point to an image file (see :mod:`vmkeep.jobs.restore_image`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, restore_image)
