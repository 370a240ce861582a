"""Flow: retention — forget restore points by keep rules (per VM / source), then prune.

DAG: ``forget`` (one task: keep-* rules applied per group of points with the same kind and
name, i.e. per VM, image or file source; a shared repository lock, so running backups go on)
→ ``prune`` (one task: deletes only data no restore point references and that is older than
``grace``).  Prune runs beside backups and restores (GC v2, ``docs/format.md``): what a running
backup or reader may need is kept until its lease ends, and anything written in the last
``grace`` is never deleted even if a lease was misjudged stale.

``prune_after=False`` runs ``forget`` only (the data stays until a later prune).  The
newest point of every group is always kept (see :mod:`vmkeep.storage.retention`).  Returns
``{"policy", "kept", "forgotten", "prune"}``; publishes a table artifact ``retention`` (kept
and forgotten per name) and, after a prune, ``retention-prune`` with the bytes freed and what
the grace period and running leases hold back.
"""

from __future__ import annotations

from typing import Any

from vmkeep.storage.repository import Repository
from vmkeep.tasks.runtime import NO_CACHE, flow, publish_table, step, task
from vmkeep.tasks.source_credentials import refuse_secret_parameters


@task(name="forget", cache_policy=NO_CACHE, persist_result=False)
def forget_task(
    repo: Repository, policy: dict[str, Any], names: list[str], dry_run: bool
) -> dict[str, Any]:
    """Apply the keep rules; returns kept and forgotten point ids (with names and reasons)."""
    from vmkeep.storage.forget import forget_by_policy
    from vmkeep.storage.retention import Policy, parse_duration

    within = policy.get("within")
    rules = Policy(
        last=int(policy.get("last", 0)),
        hourly=int(policy.get("hourly", 0)),
        daily=int(policy.get("daily", 0)),
        weekly=int(policy.get("weekly", 0)),
        monthly=int(policy.get("monthly", 0)),
        yearly=int(policy.get("yearly", 0)),
        within=parse_duration(within) if within else None,
    )
    if rules.empty():
        raise ValueError("retention: the policy keeps everything; give at least one keep rule")
    decisions = forget_by_policy(repo, rules, names=names, dry_run=dry_run)
    return {
        "policy": rules.to_json(),
        "kept": [
            {"id": d.point.id, "name": d.point.name, "reasons": d.reasons}
            for d in decisions
            if d.keep
        ],
        "forgotten": [{"id": d.point.id, "name": d.point.name} for d in decisions if not d.keep],
    }


@task(name="prune", cache_policy=NO_CACHE, persist_result=False)
def prune_task(repo: Repository, grace: str, dry_run: bool) -> dict[str, Any]:
    """Delete unreferenced data older than ``grace`` (e.g. ``24h``); returns the prune report."""
    from vmkeep.storage.prune import prune
    from vmkeep.storage.retention import parse_duration

    report: dict[str, Any] = prune(repo, grace=parse_duration(grace), dry_run=dry_run).to_json()
    return report


@flow(name="retention", persist_result=False, log_prints=False)
def retention(
    repo: str,
    keep_daily: int = 7,
    keep_weekly: int = 4,
    keep_monthly: int = 6,
    keep_last: int = 0,
    keep_yearly: int = 0,
    keep_within: str | None = None,
    names: list[str] | None = None,
    prune_after: bool = True,
    grace: str = "4h",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Forget points of ``repo`` outside the keep rules (per VM / source), then prune.

    ``names``: only these VMs / sources (all when empty).  ``grace``: prune never deletes
    objects younger than this (``4h`` default; running backups and restores are protected by
    their leases whatever their age).
    """
    refuse_secret_parameters(repo=repo)
    repository = Repository.open(repo)
    policy = {
        "last": keep_last,
        "daily": keep_daily,
        "weekly": keep_weekly,
        "monthly": keep_monthly,
        "yearly": keep_yearly,
        "within": keep_within,
    }
    result = step(forget_task, repository, policy, list(names or []), dry_run)
    result["prune"] = step(prune_task, repository, grace, dry_run) if prune_after else None
    by_name: dict[str, dict[str, int]] = {}
    for key in ("kept", "forgotten"):
        for p in result[key]:
            by_name.setdefault(p["name"], {"kept": 0, "forgotten": 0})[key] += 1
    publish_table(
        "retention",
        [{"name": n, **counts} for n, counts in sorted(by_name.items())],
        f"Retention {result['policy']}" + (" (dry run)" if dry_run else ""),
    )
    pruned = result["prune"]
    if pruned:
        publish_table(
            "retention-prune",
            [
                {
                    key: pruned.get(key, 0)
                    for key in (
                        "bytes_freed",
                        "packs_deleted",
                        "packs_repacked",
                        "bytes_held_by_grace",
                        "bytes_held_by_leases",
                        "missing_blobs",
                    )
                }
            ],
            f"Prune after retention: freed {pruned.get('bytes_freed', 0)} bytes"
            + (" (dry run: at most)" if dry_run else ""),
        )
    return result
