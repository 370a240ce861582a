"""The licence check as a job step: decide (:func:`vmkeep.tasks.license_check.decide`, the one
decision), publish the report through the runtime, refuse before any snapshot, read or cartridge
move.

A parent job (``backup-vms``) checks once for all its VMs and tells its children
(``licence_checked``), so a run publishes one licence report, not one per VM.  The licence
report job (:mod:`vmkeep.jobs.licence_report`) publishes its read-only decision with
:func:`publish`, under the same keys.
"""

from __future__ import annotations

from typing import Any

from vmkeep.licensing.check import LicenceDecision
from vmkeep.licensing.report import render_markdown, render_warning_markdown, table_rows
from vmkeep.runtime.base import NO_RETRY, Runtime, step_def
from vmkeep.tasks.license_check import REPORT_KEY, TABLE_KEY, WARNING_KEY, decide


@step_def("licence-check", NO_RETRY)
def _decide(**kwargs: Any) -> Any:
    return decide(**kwargs)


def publish(rt: Runtime, decision: LicenceDecision, title: str | None = None) -> None:
    """The report (markdown), the use per meter (table) and, when due, a warning; warnings are
    logged too."""
    verdict = "refused" if decision.refusal else "allowed"
    rt.publish_markdown(
        REPORT_KEY,
        render_markdown(decision, title=title or f"vmkeep licence check ({verdict})"),
        f"Licence check: {decision.operation} {verdict}",
    )
    rt.publish_table(TABLE_KEY, table_rows(decision), "Licence use per meter")
    if decision.warnings:
        rt.publish_markdown(WARNING_KEY, render_warning_markdown(decision), "Licence warning")
    for warning in decision.warnings:
        rt.log.warning("licence: %s", warning)


def check(rt: Runtime, **kwargs: Any) -> dict[str, Any]:
    """Decide for this run (keywords as :func:`decide`); raises ``LicenceRefused`` (exit 17)."""
    decision = rt.step(_decide, **kwargs)
    publish(rt, decision)
    if decision.refusal is not None:
        raise decision.refusal
    result: dict[str, Any] = decision.as_dict()
    return result
