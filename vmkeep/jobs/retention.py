"""Jobs: retention — forget restore points (by keep rules per VM / source, or by id), then
prune; and prune on its own.

``forget`` (one step: keep-* rules applied per group of points with the same kind and name —
and for VM points the same instance UUID — i.e. per VM, image or file source
(:func:`vmkeep.storage.retention.group_of`), or the given ids; a shared repository lock, so running
backups go on) → ``prune`` (one step: deletes only data no restore point references and that is
older than ``grace``).  Prune runs beside backups and restores (GC v2, ``docs/format.md``): what
a running backup or reader may need is kept until its lease ends, and anything written in the
last ``grace`` is never deleted even if a lease was misjudged stale.

Neither step is retried: a forget or prune interrupted half-way is safe (tombstones, manifests
and packs are removed in an order a later run finishes) but is the operator's to re-run.

:func:`retention` returns ``{"dry_run", "policy", "kept", "forgotten", "prune"}`` (``kept``:
points with the rules that kept them; ``forgotten``: the points forgotten; ``prune``: the prune
report or None) and publishes the table ``retention`` (kept and forgotten per name) and, after a
prune, ``retention-prune`` (bytes freed, what the grace period and running leases hold back).
:func:`prune` returns the prune report and publishes ``retention-prune``.
"""

from __future__ import annotations

from typing import Any

from vmkeep.jobs.maintenance_specs import PruneSpec, RetentionSpec
from vmkeep.runtime.base import NO_RETRY, Runtime, step_def
from vmkeep.storage.repository import Repository
from vmkeep.storage.retention import parse_duration
from vmkeep.tasks.source_credentials import refuse_secret_parameters

PRUNE_COLUMNS = (
    "bytes_freed",
    "packs_deleted",
    "packs_repacked",
    "bytes_held_by_grace",
    "bytes_held_by_leases",
    "missing_blobs",
)


@step_def("forget", NO_RETRY)
def forget_step(repo: Repository, spec: RetentionSpec) -> dict[str, Any]:
    """Forget by the spec's ids or keep rules; returns kept and forgotten points."""
    from vmkeep.storage.forget import forget_by_policy, forget_ids
    from vmkeep.storage.protection import refuse_protected

    if spec.ids:
        points = {p.id: p for p in repo.list_points()}
        full = [repo.resolve(i) for i in spec.ids]
        refuse_protected(repo, full)  # also in a dry run: it says what a real run would do
        if not spec.dry_run:
            forget_ids(repo, full)
        return {
            "kept": [],
            "forgotten": [points[i].to_json() if i in points else {"id": i} for i in full],
        }
    decisions = forget_by_policy(
        repo, spec.policy(), names=spec.names, dry_run=spec.dry_run
    )
    return {
        "kept": [{**d.point.to_json(), "reasons": d.reasons} for d in decisions if d.keep],
        "forgotten": [d.point.to_json() for d in decisions if not d.keep],
    }


@step_def("prune", NO_RETRY)
def prune_step(
    repo: Repository, grace: str, repack_below: float, max_unused: float, dry_run: bool
) -> dict[str, Any]:
    """Delete unreferenced data older than ``grace`` (e.g. ``24h``); returns the prune report."""
    from vmkeep.storage.prune import prune as prune_repository

    report: dict[str, Any] = prune_repository(
        repo,
        grace=parse_duration(grace),
        repack_below=repack_below,
        max_unused=max_unused,
        dry_run=dry_run,
    ).to_json()
    return report


def _publish_prune(rt: Runtime, report: dict[str, Any], dry_run: bool) -> None:
    rt.publish_table(
        "retention-prune",
        [{key: report.get(key, 0) for key in PRUNE_COLUMNS}],
        f"Prune: freed {report.get('bytes_freed', 0)} bytes"
        + (" (dry run: at most)" if dry_run else ""),
    )
    rt.log.info(
        "prune%s: %d pack(s) deleted, %d repacked, %d bytes freed",
        " (dry run)" if dry_run else "",
        report.get("packs_deleted", 0),
        report.get("packs_repacked", 0),
        report.get("bytes_freed", 0),
    )


def retention(spec: RetentionSpec, rt: Runtime) -> dict[str, Any]:
    """Forget points of ``spec.repo`` by its rules or ids, then (``prune_after``) prune."""
    refuse_secret_parameters(repo=spec.repo)
    repository = Repository.open(spec.repo)
    result: dict[str, Any] = {
        "dry_run": spec.dry_run,
        **({} if spec.ids else {"policy": spec.policy().to_json()}),
        **rt.step(forget_step, repository, spec),
    }
    verb = "would forget" if spec.dry_run else "forgot"
    rt.log.info("%s %d restore point(s), kept %d", verb, len(result["forgotten"]),
                len(result["kept"]))
    by_name: dict[str, dict[str, int]] = {}
    for key in ("kept", "forgotten"):
        for p in result[key]:
            by_name.setdefault(str(p.get("name", "?")), {"kept": 0, "forgotten": 0})[key] += 1
    rt.publish_table(
        "retention",
        [{"name": n, **counts} for n, counts in sorted(by_name.items())],
        f"Retention {result.get('policy', 'by id')}" + (" (dry run)" if spec.dry_run else ""),
    )
    result["prune"] = None
    if spec.prune_after:
        result["prune"] = rt.step(
            prune_step, repository, spec.grace, spec.repack_below, spec.max_unused, spec.dry_run
        )
        _publish_prune(rt, result["prune"], spec.dry_run)
    return result


def prune(spec: PruneSpec, rt: Runtime) -> dict[str, Any]:
    """Prune ``spec.repo``; returns the prune report."""
    refuse_secret_parameters(repo=spec.repo)
    report = rt.step(
        prune_step,
        Repository.open(spec.repo),
        spec.grace,
        spec.repack_below,
        spec.max_unused,
        spec.dry_run,
    )
    _publish_prune(rt, report, spec.dry_run)
    return report
