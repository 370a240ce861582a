"""Flows ``retention`` and ``prune``: the Prefect faces of :func:`vmkeep.jobs.retention.retention`
(forget by keep rules per VM / source, then prune) and :func:`vmkeep.jobs.retention.prune`.
Each takes one spec; a retention without any keep rule is refused before the run starts.
Neither is retried as a whole (a half-done forget or prune is the operator's to re-run)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs import retention as jobs
from vmkeep.jobs.maintenance_specs import PruneSpec, RetentionSpec
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


def _rules(spec: RetentionSpec) -> str:
    if spec.ids:
        return f"{len(spec.ids)} point(s)"
    return " ".join(f"{k}={v}" for k, v in spec.policy().to_json().items())


@flow(
    name="retention",
    flow_run_name=run_name("retention", RetentionSpec, lambda s: f"{s.repo} {_rules(s)}"),
    persist_result=False,
    log_prints=False,
)
def retention(spec: RetentionSpec) -> dict[str, Any]:
    """Forget restore points by keep rules (or ids), then prune (see
    :mod:`vmkeep.jobs.retention`)."""
    result: dict[str, Any] = run_job_in_flow(jobs.retention, spec)
    return result


@flow(
    name="prune",
    flow_run_name=run_name("prune", PruneSpec, lambda s: f"{s.repo} grace={s.grace}"),
    persist_result=False,
    log_prints=False,
)
def prune(spec: PruneSpec) -> dict[str, Any]:
    """Delete data no restore point references (see :mod:`vmkeep.jobs.retention`)."""
    result: dict[str, Any] = run_job_in_flow(jobs.prune, spec)
    return result


register_flow(jobs.retention, retention)
register_flow(jobs.prune, prune)
