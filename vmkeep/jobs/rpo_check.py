"""Job: the recovery point objective — does every backup name have a recent restore point?

Job reports (:mod:`vmkeep.runtime.notify`) say when a run failed; a backup that no longer runs
at all — its schedule switched off, its worker gone, its VM left out of a pattern — says
nothing.  This job reads the point headers of each repository in ``spec.repos`` (an unset mover
target, ``""``, is skipped; damaged manifests are left out with a warning), takes the newest
point of each backup name chosen by ``spec.names`` / ``spec.exclude`` (glob patterns; a name in
several repositories: its newest point in any of them) and fails
when one is older than ``spec.max_age_hours`` (:class:`RpoMissed`, exit code 1, the summary
attached), so the run's report names them.  Read-only (no lock is taken: listing points runs
beside backups and prune).  A pattern in ``spec.names`` that matches no point at all is missed
too (a VM never backed up to these repositories); without ``spec.names`` only names that
have points are seen.

Summary: ``{"max_age_hours", "checked", "missed": [row], "met": [row]}``, a row
``{"repo", "name", "kind", "newest", "point", "age_hours"}`` (``None`` but the name for a
pattern without points), ``missed`` never-backed-up first, then oldest first.
"""

from __future__ import annotations

import fnmatch
from datetime import datetime
from typing import Any

from vmkeep import clock
from vmkeep.errors import InputError, VmkeepError
from vmkeep.jobs.maintenance_specs import RpoCheckSpec
from vmkeep.runtime.base import Runtime, step_def
from vmkeep.storage.repository import DamagedPoint, Repository
from vmkeep.tasks.source_credentials import refuse_secret_parameters


class RpoMissed(VmkeepError):
    """{} of {} backup name(s) have no restore point newer than {:g} h: {}"""

    exit_code = 1

    def __init__(self, missed: list[dict[str, Any]], checked: int, hours: float,
                 summary: dict[str, Any]) -> None:
        shown = ", ".join(f"{row['name']} ({_age(row)})" for row in missed[:10])
        more = f" and {len(missed) - 10} more" if len(missed) > 10 else ""
        super().__init__(len(missed), checked, hours, shown + more)
        self.summary = summary


def _age(row: dict[str, Any]) -> str:
    return "no point" if row["age_hours"] is None else f"{row['age_hours']:.0f} h"


@step_def("newest-points")
def newest_points(repo: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The newest point of each backup name in ``repo``, and the damaged manifests skipped."""
    damaged: list[DamagedPoint] = []
    newest: dict[str, Any] = {}
    repository = Repository.open(repo)
    try:
        for point in repository.summaries(damaged):
            known = newest.get(point.name)
            if known is None or (point.time, point.id) > (known.time, known.id):
                newest[point.name] = point
    finally:
        repository.close()
    rows = [
        {"repo": repo, "name": p.name, "kind": p.kind, "newest": p.time.isoformat(),
         "point": p.id[:8]}
        for p in newest.values()
    ]
    return rows, [f"{repo}: point {d.id[:8]} damaged ({d.reason})" for d in damaged]


def _time(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(row["newest"])


def _chosen(name: str, spec: RpoCheckSpec) -> bool:
    wanted = not spec.names or any(fnmatch.fnmatchcase(name, p) for p in spec.names)
    return wanted and not any(fnmatch.fnmatchcase(name, p) for p in spec.exclude)


def rpo_check(spec: RpoCheckSpec, rt: Runtime) -> dict[str, Any]:
    """Check the newest point of every chosen backup name; raises :class:`RpoMissed`."""
    repos = [r for r in spec.repos if r.strip()]
    refuse_secret_parameters(**{f"repo{i}": r for i, r in enumerate(repos)})
    if not repos:
        raise InputError("rpo-check: no repository given")
    now = clock.now()
    newest: dict[str, dict[str, Any]] = {}  # a name in several repositories: its newest point
    for repo in repos:
        found, damaged = rt.step(newest_points, repo, step_name=f"newest points {repo}")
        for line in damaged:
            rt.log.warning("%s", line)
        for row in found:
            known = newest.get(row["name"])
            if _chosen(row["name"], spec) and (known is None or _time(row) > _time(known)):
                newest[row["name"]] = row
    rows = list(newest.values())
    for row in rows:
        age = (now - _time(row)).total_seconds() / 3600
        row["age_hours"], row["missed"] = round(age, 2), age > spec.max_age_hours
    never = [  # a name asked for by the admin with no point at all: never backed up here
        {"repo": None, "name": pattern, "kind": None, "newest": None, "point": None,
         "age_hours": None, "missed": True}
        for pattern in spec.names
        if not any(fnmatch.fnmatchcase(row["name"], pattern) for row in rows)
    ]
    missed = never + sorted((r for r in rows if r["missed"]), key=lambda r: -r["age_hours"])
    met = sorted((r for r in rows if not r["missed"]), key=lambda r: r["name"])
    for row in (*missed, *met):
        del row["missed"]
    rt.publish_table(
        "rpo-check",
        [{"name": r["name"], "newest point": r["newest"], "age h": r["age_hours"],
          "RPO": "missed" if r in missed else "met", "repository": r["repo"] or ""}
         for r in [*missed, *met]],
        f"{len(met)} of {len(missed) + len(met)} backup names within {spec.max_age_hours:g} h",
    )
    checked = len(missed) + len(met)
    summary = {"max_age_hours": spec.max_age_hours, "checked": checked, "missed": missed,
               "met": met}
    if missed:
        raise RpoMissed(missed, checked, spec.max_age_hours, summary)
    return summary

