"""Job: the licence report — the installed licence against what the repositories protect.

For each repository in ``repos`` (one per data mover target; an unset one, ``""``, is skipped)
the catalog of protected items (:mod:`vmkeep.tasks.catalog`: VM points per guest and host, file
points per machine read, image points per image, SRD data movers) → one ``licence-status`` step:
that usage united with this installation's ledger (:mod:`vmkeep.licensing.ledger`), by workload
identity, inside the window, against the licence or the community tier; warnings at >= 90 % use
or near expiry.  Publishes what a backup's licence check publishes (``vmkeep-licence-report``,
``vmkeep-licence-usage``, ``vmkeep-licence-warning`` when due; :func:`vmkeep.jobs.licence.publish`)
once per run, and returns the decision as a dict.  It never refuses anything: a report over an
over-used or expired licence completes; ``compliant`` says so.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from vmkeep.jobs import licence
from vmkeep.jobs.maintenance_specs import LicenceReportSpec
from vmkeep.licensing.check import LicenceDecision
from vmkeep.licensing.gate import usage_report
from vmkeep.licensing.usage import ProtectedItem
from vmkeep.runtime.base import NO_RETRY, Runtime, step_def
from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import catalog_items


@step_def("licence-status", NO_RETRY)
def licence_status(
    items: list[ProtectedItem], window_days: int, licence_file: str | None
) -> LicenceDecision:
    """Usage of ``items`` and the ledger inside the window against the licence."""
    return usage_report(items, licence_file=licence_file, window=timedelta(days=window_days))


def licence_report(spec: LicenceReportSpec, rt: Runtime) -> dict[str, Any]:
    """Report licence use over ``spec.repos``; returns the decision as a dict."""
    items: list[ProtectedItem] = []
    for repo in (r for r in spec.repos if r.strip()):
        items.extend(catalog_items(Repository.open(repo)))
    decision = rt.step(licence_status, items, spec.window_days, spec.licence_file)
    licence.publish(rt, decision, title="vmkeep licence report")
    verdict = "compliant" if decision.compliant else "NOT compliant"
    rt.log.info("licence %s: %d protected item(s) counted", verdict, len(items))
    result: dict[str, Any] = decision.as_dict()
    return result
