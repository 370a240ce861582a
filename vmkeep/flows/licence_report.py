"""Flow ``licence-report``: the Prefect face of
:func:`vmkeep.jobs.licence_report.licence_report` (never refuses; one report per run)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.licence_report import licence_report as job
from vmkeep.jobs.maintenance_specs import LicenceReportSpec
from vmkeep.runtime.prefect_runtime import FLOW_RETRIES, register_flow, run_job_in_flow, run_name


def _repos(spec: LicenceReportSpec) -> str:
    repos = [r for r in spec.repos if r.strip()]
    return f"{len(repos)} repositor{'y' if len(repos) == 1 else 'ies'}"


@flow(
    name="licence-report",
    flow_run_name=run_name("licence-report", LicenceReportSpec, _repos),
    persist_result=False,
    log_prints=False,
    **FLOW_RETRIES,
)
def licence_report(spec: LicenceReportSpec) -> dict[str, Any]:
    """Report licence use over every mover's repository (see :mod:`vmkeep.jobs.licence_report`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, licence_report)
