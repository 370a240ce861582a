"""Forget restore points: delete their manifests by policy or by id (data stays until prune).

Runs under a **shared** lock: deleting a manifest cannot hurt a concurrent backup (its parent's
chunks stay stored until prune, which needs the exclusive lock).  The newest point of every group
is kept by policy runs (see :mod:`vmkeep.storage.retention`); forgetting it takes an explicit id.
Protected points (:mod:`vmkeep.storage.protection`) are kept by policy runs and refused by id.

Each point is forgotten in three atomic steps, in this order:

1. put the **tombstone** ``forgotten/<point id>`` (JSON ``{"format": "vmkeep-tombstone",
   "version": 1, "point": id, "time": ISO-8601, "hostname": str}``; sealed with the object name
   as associated data in an encrypted repository, so it cannot be forged without the key).  It
   tells other clients that the point went away through ``forget`` and not through a rollback
   (see :mod:`vmkeep.storage.known_state`); tombstones are tiny, and prune deletes them
   :data:`TOMBSTONE_TTL` (90 days) after they were written, once the manifest is gone;
2. delete the manifest;
3. delete the point's derived file-name catalog ``catalog/<point id>.parquet`` if any (only an
   index for ``vmkeep find``; a leftover one is harmless, and prune may delete it too).

A crash leaves some points forgotten and others not, all consistent.  A crash between 1 and 2
leaves a tombstone beside a manifest that still exists: harmless (the point is listed and restores
as before; running forget again finishes the job) — except that rollback detection no longer
protects that one point, since a tombstone vouches for its absence.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Literal

from vmkeep import clock
from vmkeep.storage.backend import Backend
from vmkeep.storage.catalogs import catalog_key
from vmkeep.storage.errors import StorageError
from vmkeep.storage.manifest import point_key
from vmkeep.storage.protection import protections, refuse_protected
from vmkeep.storage.repository import Repository
from vmkeep.storage.retention import Decision, Policy, apply_policy

log = logging.getLogger(__name__)

FORGOTTEN_PREFIX = "forgotten"
TOMBSTONE_FORMAT = "vmkeep-tombstone"
TOMBSTONE_VERSION = 1
#: Prune deletes tombstones older than this (by the target's modification time).  A client that
#: has not listed the repository for longer accepts points gone without a tombstone (see
#: :mod:`vmkeep.storage.known_state`).
TOMBSTONE_TTL = timedelta(days=90)


def tombstone_key(point_id: str) -> str:
    return f"{FORGOTTEN_PREFIX}/{point_id}"


def encode_tombstone(point_id: str) -> bytes:
    return json.dumps(
        {
            "format": TOMBSTONE_FORMAT,
            "version": TOMBSTONE_VERSION,
            "point": point_id,
            "time": clock.now().isoformat(),
            "hostname": socket.gethostname(),
        }
    ).encode()


def tombstoned(backend: Backend, point_ids: Collection[str]) -> set[str]:
    """Which of ``point_ids`` have a valid tombstone: listed, readable (authenticated through an
    encrypted repository's backend) and naming that point.  One list, plus one get per candidate;
    a forged or damaged tombstone does not count (and is logged)."""
    wanted = set(point_ids)
    if not wanted:
        return set()
    found: set[str] = set()
    for key, _size in backend.list(FORGOTTEN_PREFIX):
        point_id = key.rsplit("/", 1)[-1]
        if point_id not in wanted:
            continue
        try:
            obj = json.loads(backend.get(key))
            ok = (
                isinstance(obj, dict)
                and obj.get("format") == TOMBSTONE_FORMAT
                and obj.get("point") == point_id
            )
        except (StorageError, ValueError) as exc:
            log.warning("ignoring tombstone %s: %s", key, exc)
            continue
        if ok:
            found.add(point_id)
        else:
            log.warning("ignoring tombstone %s: it does not name that restore point", key)
    return found


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
    held = protections(repo.backend, {d.point.id for d in decisions if not d.keep})
    for decision in decisions:
        if not decision.keep and decision.point.id in held:
            decision.keep, decision.reasons = True, ["protected"]
    doomed = [d.point.id for d in decisions if not d.keep]
    if doomed and not dry_run:
        forgotten = set(forget_ids(repo, doomed, protected="skip"))
        for decision in decisions:  # protected since the decisions were made: kept after all
            if not decision.keep and decision.point.id not in forgotten:
                decision.keep, decision.reasons = True, ["protected"]
    return decisions


def forget_ids(
    repo: Repository,
    point_ids: Sequence[str],
    *,
    lock: bool = True,
    protected: Literal["refuse", "skip"] = "refuse",
) -> list[str]:
    """Forget ``point_ids`` (full ids) under a shared lock: tombstone, manifest, catalog;
    returns the ids forgotten.

    Protected points (:mod:`vmkeep.storage.protection`), read again under the lock: with
    ``protected="refuse"`` (an explicit forget) :class:`PointProtected` is raised before anything
    is forgotten; with ``"skip"`` (keep rules, whose decisions were made before the lock) they
    are left alone and logged."""
    held = repo.lock("shared", command="forget") if lock else None
    done: list[str] = []
    try:
        shielded = protections(repo.backend, set(point_ids))
        if shielded and protected == "refuse":
            refuse_protected(repo, point_ids)
        for point_id in point_ids:
            if point_id in shielded:
                log.warning("restore point %s was protected meanwhile: kept", point_id[:8])
                continue
            repo.backend.put(tombstone_key(point_id), encode_tombstone(point_id))
            repo.backend.delete(point_key(point_id))
            done.append(point_id)
            repo.backend.delete(catalog_key(point_id))
    finally:
        repo.forget_known(done)  # this client need not look for their tombstones later
        if held is not None:
            held.release()
    return done
