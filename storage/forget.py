"""Forget restore points: delete their manifests by policy or by id (data stays until prune).

Runs under a **shared** lock: deleting a manifest cannot hurt a concurrent backup (its parent's
chunks stay stored until prune, which needs the exclusive lock).  Each deletion is one atomic
``delete``; a crash leaves some points forgotten and others not, all consistent.  The newest
point of every group is kept by policy runs (see :mod:`vmkeep.storage.retention`); forgetting it
takes an explicit id.
"""

from __future__ import annotations

from collections.abc import Sequence

from vmkeep.storage.manifest import point_key
from vmkeep.storage.repository import Repository
from vmkeep.storage.retention import Decision, Policy, apply_policy


def forget_by_policy(
    repo: Repository,
    policy: Policy,
    *,
    names: Sequence[str] = (),
    dry_run: bool = False,
) -> list[Decision]:
    """Apply ``policy`` to the points of ``names`` (all when empty); returns every decision."""
    points = [p for p in repo.list_points() if not names or p.name in names]
    decisions = apply_policy(points, policy)
    doomed = [d.point.id for d in decisions if not d.keep]
    if doomed and not dry_run:
        forget_ids(repo, doomed)
    return decisions


def forget_ids(repo: Repository, point_ids: Sequence[str], *, lock: bool = True) -> None:
    """Delete the manifests of ``point_ids`` (full ids) under a shared lock."""
    held = repo.lock("shared", command="forget") if lock else None
    try:
        for point_id in point_ids:
            repo.backend.delete(point_key(point_id))
    finally:
        if held is not None:
            held.release()
