"""Flow ``restore-files``: the Prefect face of :func:`vmkeep.jobs.restore_files.restore_files`.

Named ``restore-files <point> to <folder | VM:DIR> <YYYY-MM-DD HH:MM>``; one
:class:`~vmkeep.jobs.restore_specs.RestoreFilesSpec` parameter (no paths, or not exactly one of
a folder and a guest, is refused before the run starts).  No flow retries.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.restore_files import restore_files as job
from vmkeep.jobs.restore_specs import RestoreFilesSpec
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="restore-files",
    flow_run_name=run_name(
        "restore-files", RestoreFilesSpec, lambda s: f"{s.point} to {s.target or s.guest}"
    ),
    persist_result=False,
    log_prints=False,
)
def restore_files(spec: RestoreFilesSpec) -> dict[str, Any]:
    """Restore files into a folder or a running guest (see :mod:`vmkeep.jobs.restore_files`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, restore_files)
