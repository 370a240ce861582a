"""Flow ``restore-file-point``: the Prefect face of
:func:`vmkeep.jobs.restore_file_point.restore_file_point` (paths of a file restore point into a
folder or an ``sftp://`` / ``smb://`` URL).

Named ``restore-file-point <point> to <target> <YYYY-MM-DD HH:MM>``; one
:class:`~vmkeep.jobs.restore_specs.RestoreFilePointSpec` parameter.  No flow retries.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.restore_file_point import restore_file_point as job
from vmkeep.jobs.restore_specs import RestoreFilePointSpec
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="restore-file-point",
    flow_run_name=run_name(
        "restore-file-point", RestoreFilePointSpec, lambda s: f"{s.point} to {s.target}"
    ),
    persist_result=False,
    log_prints=False,
)
def restore_file_point(spec: RestoreFilePointSpec) -> dict[str, Any]:
    """Restore paths of a file point (see :mod:`vmkeep.jobs.restore_file_point`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, restore_file_point)
