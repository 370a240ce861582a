"""Flow: the licence report — installed licence against what the repositories protect.

DAG: for each repository in ``repos`` (one per data mover target), the catalog of protected
items inside the retention window (``vmkeep/tasks/catalog.py``: VM points per guest and host,
file points per machine read, image points per image, SRD data movers) → one ``licence-status``
task: that usage united with this installation's ledger (:mod:`vmkeep.licensing.ledger`), by
workload identity, against the licence or the community tier; warnings at >= 90 % use or near
expiry.  Publishes the same artifacts as the licence check of a backup
(``vmkeep-licence-report`` markdown, ``vmkeep-licence-usage`` table, and a
``vmkeep-licence-warning`` when due) and returns the decision as a dict.  It never refuses
anything: a report run of an over-used or expired licence completes; ``compliant`` says so.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from vmkeep.licensing.gate import usage_report
from vmkeep.licensing.usage import ProtectedItem
from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import catalog_items
from vmkeep.tasks.license_check import publish
from vmkeep.tasks.runtime import NO_CACHE, flow, step, task


@task(name="licence-status", cache_policy=NO_CACHE, persist_result=False)
def licence_status_task(
    items: list[ProtectedItem], window_days: int, licence_file: str | None
) -> dict[str, Any]:
    """Usage of ``items`` and the ledger inside the window against the licence (artifacts too)."""
    decision = usage_report(items, licence_file=licence_file, window=timedelta(days=window_days))
    publish(decision)
    out: dict[str, Any] = decision.as_dict()
    return out


@flow(name="licence-report", persist_result=False, log_prints=False)
def licence_report(
    repos: list[str], window_days: int = 90, licence_file: str | None = None
) -> dict[str, Any]:
    """Report licence use over every repository in ``repos`` (protected inside
    ``window_days``); ``licence_file`` overrides the installed licence's path."""
    items: list[ProtectedItem] = []
    for repo in (r for r in repos if r):  # an unset mover target ("") is skipped
        items.extend(catalog_items(Repository.open(repo)))
    result: dict[str, Any] = step(licence_status_task, items, window_days, licence_file)
    return result
