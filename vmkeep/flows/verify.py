"""Flows ``verify`` and ``verify-point``: the Prefect faces of :func:`vmkeep.jobs.verify.verify`
(the weekly verify of a repository) and :func:`vmkeep.jobs.verify.verify_point` (``verify fs`` /
``verify boot`` of one restore point).  Each takes one spec; runs are named ``verify <repo>
<date>`` and ``verify boot <point> <date>``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs import verify as jobs
from vmkeep.jobs.maintenance_specs import VerifyPointSpec, VerifySpec
from vmkeep.jobs.verify import VerificationFailed, VerifyFailed, parse_subset
from vmkeep.runtime.prefect_runtime import FLOW_RETRIES, register_flow, run_job_in_flow, run_name

__all__ = ["VerificationFailed", "VerifyFailed", "parse_subset", "verify", "verify_point"]


@flow(
    name="verify",
    flow_run_name=run_name("verify", VerifySpec, lambda s: s.repo),
    persist_result=False,
    log_prints=False,
    **FLOW_RETRIES,
)
def verify(spec: VerifySpec) -> dict[str, Any]:
    """Check a repository and test-restore the newest point of each VM (see
    :mod:`vmkeep.jobs.verify`)."""
    result: dict[str, Any] = run_job_in_flow(jobs.verify, spec)
    return result


@flow(
    name="verify-point",
    flow_run_name=run_name("verify", VerifyPointSpec, lambda s: f"{s.check} {s.point}"),
    persist_result=False,
    log_prints=False,
)
def verify_point(spec: VerifyPointSpec) -> dict[str, Any]:
    """Check one restore point's file systems, or boot it (see :mod:`vmkeep.jobs.verify`)."""
    result: dict[str, Any] = run_job_in_flow(jobs.verify_point, spec)
    return result


register_flow(jobs.verify, verify)
register_flow(jobs.verify_point, verify_point)
