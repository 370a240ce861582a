"""Flow ``backup-files``: the Prefect face of :func:`vmkeep.jobs.backup_files.backup_files`.

Its parameter is one :class:`~vmkeep.jobs.specs.BackupFilesSpec`: an empty ``source`` or
``name`` is refused before the run starts, so a deployment whose settings are still empty can
never commit an empty, nameless restore point.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.backup_files import backup_files as job
from vmkeep.jobs.specs import BackupFilesSpec
from vmkeep.runtime.prefect_runtime import FLOW_RETRIES, register_flow, run_job_in_flow, run_name


@flow(
    name="backup-files",
    flow_run_name=run_name("backup-files", BackupFilesSpec, lambda s: s.name),
    persist_result=False,
    log_prints=False,
    **FLOW_RETRIES,
)
def backup_files(spec: BackupFilesSpec) -> dict[str, Any]:
    """Back up one guest file tree (see :mod:`vmkeep.jobs.backup_files`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, backup_files)
