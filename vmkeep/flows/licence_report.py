"""Flow: the licence report — installed licence against what the repositories protect.

DAG: for each repository in ``repos`` (one per data mover target), the catalog of protected
items inside the retention window (``vmkeep/tasks/catalog.py``: VM points per guest and host, file
points per client, SRD data movers) → one ``licence-status`` task: usage against the licence,
warnings at >= 90 % use or near expiry.  Publishes the same artifacts as the licence check of
a backup (``vmkeep-licence-report`` markdown, ``vmkeep-licence-usage`` table, and a
``vmkeep-licence-warning`` when due) and returns the decision as a dict.  It never refuses
anything: a report run of an over-used or expired licence completes; ``compliant`` says so.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from vmkeep import clock
from vmkeep.licensing.check import licence_status
from vmkeep.licensing.store import load_state
from vmkeep.licensing.usage import ProtectedItem, usage_from_items
from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import catalog_items
from vmkeep.tasks.license_check import publish
from vmkeep.tasks.runtime import NO_CACHE, flow, step, task


@task(name="licence-status", cache_policy=NO_CACHE, persist_result=False)
def licence_status_task(
    items: list[ProtectedItem], window_days: int, licence_file: str | None
) -> dict[str, Any]:
    """Usage of ``items`` inside the window against the installed licence (artifacts too)."""
    state = load_state(licence_file, None)
    since = clock.now() - timedelta(days=window_days)
    decision = licence_status(state.for_check, usage_from_items(items, since), clock.now())
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
