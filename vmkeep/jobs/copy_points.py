"""Job: copy restore points from one repository into another — the off-site copy of the 3-2-1
rule (Veeam's backup copy job, Proxmox Backup Server's sync job, ``restic copy``).

Open both repositories (the destination with ``VMKEEP_PASSWORD*``, the source with
``VMKEEP_FROM_PASSWORD*``, else the destination's) → shared locks on both (prune waits in
either) → choose the source points: ``spec.points`` (ids, prefixes, ``NAME@latest``) or every
point, narrowed by ``spec.names`` (globs) and ``spec.latest`` (the newest of each name); a point
already copied (:func:`~vmkeep.storage.point_copy.copies_of`), and a point that is itself a copy
*from* the destination, are skipped → one step per point, oldest first
(:func:`vmkeep.tasks.copy.copy_point`), each building on the destination's newest earlier copy
of its name (only the chunks changed between the two source points are read; see
:mod:`vmkeep.storage.point_copy`).

One copy job into a destination runs at a time (the slot ``vmkeep-copy-<destination id>``, a
Prefect global concurrency limit across workers), and one copy of a source into a destination
whatever started it: the destination's writer lease carries the lock mutex
``copy from <source id>`` (:mod:`vmkeep.storage.locks`), so a second copy — another host's
hand-started one, say — waits for it (``VMKEEP_LOCK_WAIT``, default 300 s), then exits 11
naming the holder.  No licence is checked: a copy adds no
client, host or device.  A point whose data the source
cannot deliver is not copied (:class:`~vmkeep.storage.point_copy.CopySourceDamaged`); the
others still are, and the job then fails with :class:`CopyIncomplete` (exit 1, the summary
attached).  A destination error (full, unreachable) stops the job at once: what was committed
stays, nothing is half-committed.

Summary: ``{"from_repo", "repo", "copied": [row], "skipped": n, "failed": [{"source", "name",
"error"}], "damaged": [...], "warnings": [str], "bytes_read", "bytes_new", "bytes_stored",
"duration_s"}``.  A copy from an encrypted repository into one that is not is allowed (the
destination's keys decide how it stores data) and warned about: the copies are plaintext there.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Any

from vmkeep.errors import UsageError, VmkeepError
from vmkeep.jobs.maintenance_specs import CopySpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.errors import PasswordRequired, PointNotFound
from vmkeep.storage.point_copy import CopyRecord, CopySourceDamaged, copies_of, older_copy
from vmkeep.storage.repository import DamagedPoint, PointSummary, Repository
from vmkeep.tasks.copy import copy_point
from vmkeep.tasks.limits import slot_name
from vmkeep.tasks.source_credentials import refuse_secret_parameters


class CopyIncomplete(VmkeepError):
    """{} of {} restore point(s) could not be copied: {}"""

    exit_code = 1

    def __init__(self, failed: list[dict[str, Any]], chosen: int, summary: dict[str, Any]
                 ) -> None:
        shown = "; ".join(f"{row['name']} {row['source'][:8]} ({row['error']})"
                          for row in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(len(failed), chosen, shown + more)
        self.summary = summary


class SourcePasswordRequired(PasswordRequired):
    """Source repository {} is encrypted: set VMKEEP_FROM_PASSWORD, _FILE or _COMMAND."""


def open_source(location: str) -> Repository:
    """The source repository, its password from ``VMKEEP_FROM_PASSWORD*``, else
    ``VMKEEP_PASSWORD*``."""
    from vmkeep.storage.crypto import password_from_env

    def password() -> str | None:
        return password_from_env("from_") or password_from_env()

    try:
        return Repository.open(location, password=password)
    except PasswordRequired:
        raise SourcePasswordRequired(location) from None


def choose(spec: CopySpec, source: Repository, dest: Repository, points: list[PointSummary],
           copies: dict[str, PointSummary]) -> tuple[list[PointSummary], int]:
    """The source points to copy, oldest first, and how many chosen ones are already copied."""
    if spec.points:
        wanted = {source.resolve(ref) for ref in spec.points}
        points = [p for p in points if p.id in wanted]
    if spec.names:
        points = [p for p in points if any(fnmatch.fnmatchcase(p.name, g) for g in spec.names)]
    if spec.latest:
        newest: dict[str, PointSummary] = {}
        for p in points:
            newest[p.name] = p  # ``points`` is oldest first
        points = sorted(newest.values(), key=lambda p: (p.time, p.id))
    todo, skipped = [], 0
    dest_ids = set(dest.point_ids())
    for p in points:
        record = CopyRecord.from_meta(p.meta)
        came_from_dest = (record is not None and record.from_repo == dest.config.id
                          and record.point in dest_ids)
        if p.id in copies or came_from_dest:
            skipped += 1
        else:
            todo.append(p)
    return todo, skipped


def copy_mutex(source_id: str) -> str:
    """The lock mutex of copies of the repository ``source_id`` into one destination."""
    return f"copy from {source_id}"


def copy_points(spec: CopySpec, rt: Runtime) -> dict[str, Any]:
    """Copy the points ``spec`` chooses from ``spec.from_repo`` into ``spec.repo``."""
    started = time.monotonic()
    refuse_secret_parameters(repo=spec.repo, from_repo=spec.from_repo)
    source = open_source(spec.from_repo)
    dest = Repository.open(spec.repo)
    if source.config.id == dest.config.id:
        raise UsageError(f"{spec.from_repo} and {spec.repo} are the same repository")
    summary: dict[str, Any] = {"from_repo": source.backend.location,
                               "repo": dest.backend.location, "copied": [], "failed": [],
                               "warnings": []}
    if source.config.encrypted and not dest.config.encrypted:
        summary["warnings"].append(
            f"{dest.backend.location} is not encrypted: the copies of the encrypted "
            f"{source.backend.location} are stored there in plaintext")
        rt.log.warning("%s", summary["warnings"][-1])
    # one copy into a destination at a time (the slot: across workers under Prefect; the
    # mutex: across any processes and hosts): two would both find a point missing and copy it
    # twice
    with rt.slots([(slot_name("copy", dest.config.id), 1)]), source.lock("shared"), \
            dest.lock("shared", mutex=copy_mutex(source.config.id)) as lock:
        damaged: list[DamagedPoint] = []
        points = source.list_points(damaged=damaged)
        for d in damaged:
            rt.log.warning("source point %s skipped: %s", d.id[:8], d.reason)
        copies = copies_of(dest, source.config.id)
        todo, summary["skipped"] = choose(spec, source, dest, points, copies)
        rt.log.info("%d restore point(s) to copy, %d already copied", len(todo),
                    summary["skipped"])
        for p in todo:
            lock.ensure()
            base = older_copy(copies, p.name, p.kind, p.time)
            progress = rt.progress(f"{p.name} {p.id[:8]}", _size(p))
            try:
                row = rt.step(copy_point, source, dest, p, base, progress.advance,
                              step_name=f"copy {p.name} {p.id[:8]}")
            except PointNotFound:
                rt.log.info("%s %s forgotten in the source since the listing: not copied",
                            p.name, p.id[:8])
                continue
            except CopySourceDamaged as exc:
                rt.log.warning("%s %s not copied: %s", p.name, p.id[:8], exc.get_message())
                summary["failed"].append({"source": p.id, "name": p.name,
                                          "error": exc.get_message()})
                continue
            finally:
                progress.close()
            rt.log.info("%s %s copied as %s (%d bytes read, %d new)", p.name, p.id[:8],
                        row["short_id"], row["bytes_read"], row["bytes_new"])
            summary["copied"].append(row)
            copies[p.id] = PointSummary(row["id"], p.name, p.kind, p.time, None, [], {})
    summary["damaged"] = [d.to_json() for d in damaged]
    for key in ("bytes_read", "bytes_new", "bytes_stored"):
        summary[key] = sum(row[key] for row in summary["copied"])
    summary["duration_s"] = round(time.monotonic() - started, 3)
    rt.publish_table(key="vmkeep-copy", rows=summary["copied"] or [{"copied": 0}],
                     description=f"Copy from {summary['from_repo']} to {summary['repo']}")
    if summary["failed"]:
        raise CopyIncomplete(summary["failed"], len(todo), summary)
    return summary


def _size(p: PointSummary) -> int:
    """Bytes the progress bar counts: the disks' sizes, or a file point's file bytes."""
    if p.disks:
        return sum(int(d.get("size", 0)) for d in p.disks)
    stats = p.meta.get("stats")
    return int(stats.get("bytes", 0)) if isinstance(stats, dict) else 0
