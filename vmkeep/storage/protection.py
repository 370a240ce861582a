"""Protected restore points: kept by every ``forget`` until unprotected (Proxmox Backup Server's
"protected" snapshots, restic's ``forget --keep-tag``).

An administrator protects a point before an upgrade, for an audit or a legal hold:
``vmkeep protect POINT --note "before the ERP upgrade"``.  A protected point

* is kept by ``forget`` with keep rules (its decision gains the reason ``protected``, whatever
  the rules say; it still counts for them like any point);
* cannot be forgotten by id: :func:`refuse_protected` raises :class:`PointProtected` (exit 1)
  naming it and how to unprotect it;
* is otherwise an ordinary restore point (restores, copies, checks); prune never deletes what a
  point that was not forgotten references, so protection needs nothing from prune.

On-disk format (protection record version 1): the object ``protected/<point id>``, a JSON
object ``{"format": "vmkeep-protection", "version": 1, "point": id, "time": ISO-8601 (UTC),
"hostname": str, "note": str}``, stored like every object (sealed with the object's name as
associated data in an encrypted repository: it cannot be forged or moved to another point
without the key).  Protecting writes it (again: the note and time are replaced); unprotecting
deletes it.  A record that cannot be read — damaged by the target, or not sealed with the key,
or naming another point — still protects the point its *name* says, and is logged each time it
is read: forgetting cannot be undone and keeping can (as Proxmox Backup Server's protection is
its marker's existence).  ``vmkeep protect`` writes it again, ``vmkeep unprotect`` removes it.
Only an object under ``protected/`` whose name is not a point id is ignored.  Both
run under a shared lock, like ``forget``: a ``forget`` that has already listed the records may
still forget a point protected a moment later; protecting an existing point and forgetting it
are otherwise independent.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from vmkeep import clock
from vmkeep.storage.backend import Backend
from vmkeep.storage.errors import StorageError
from vmkeep.storage.repository import Repository

log = logging.getLogger(__name__)

PROTECTED_PREFIX = "protected"
PROTECTION_FORMAT = "vmkeep-protection"
PROTECTION_VERSION = 1
_POINT_ID = re.compile(r"[0-9a-f]{64}")
#: Longest note kept (characters); longer ones are refused.
MAX_NOTE = 1000


class PointProtected(StorageError):
    """Restore point {} is protected ({}): `vmkeep unprotect` it first to forget it."""

    exit_code = 1


@dataclass(frozen=True)
class Protection:
    """One point's protection record; ``damaged`` says why it could not be read (it still
    protects: its time and host are then unknown)."""

    point: str
    time: datetime
    hostname: str
    note: str
    damaged: str = ""

    def to_json(self) -> dict[str, str | None]:
        return {"point": self.point, "time": self.time.isoformat(), "hostname": self.hostname,
                "note": self.note, "damaged": self.damaged or None}

    def describe(self) -> str:
        if self.damaged:
            return (f"by a record that cannot be read ({self.damaged}); `vmkeep protect` "
                    "writes it again")
        when = self.time.strftime("%Y-%m-%d %H:%M UTC")
        return f"since {when} by {self.hostname}" + (f": {self.note}" if self.note else "")


def protection_key(point_id: str) -> str:
    return f"{PROTECTED_PREFIX}/{point_id}"


def encode(point_id: str, note: str) -> bytes:
    return json.dumps({
        "format": PROTECTION_FORMAT, "version": PROTECTION_VERSION, "point": point_id,
        "time": clock.now().isoformat(), "hostname": socket.gethostname(), "note": note,
    }).encode()


def _damaged(key: str, why: str) -> Protection:
    """The protection a record that cannot be read still gives."""
    point_id = key.rsplit("/", 1)[-1]
    return Protection(point_id, datetime.fromtimestamp(0, UTC), "", "", damaged=why)


def damaged_text(protection: Protection) -> str:
    """What to tell an administrator about a record that cannot be read."""
    return (f"protection record {protection_key(protection.point)} cannot be read "
            f"({protection.damaged}): restore point {protection.point[:8]} stays protected; "
            "`vmkeep protect` writes the record again, `vmkeep unprotect` removes it")


def _decode(key: str, data: bytes) -> Protection:
    point_id = key.rsplit("/", 1)[-1]
    try:
        obj = json.loads(data)
        if not (isinstance(obj, dict) and obj.get("format") == PROTECTION_FORMAT
                and obj.get("version") == PROTECTION_VERSION and obj.get("point") == point_id):
            raise ValueError("not a protection record of that restore point")
        return Protection(point_id, datetime.fromisoformat(str(obj["time"])),
                          str(obj.get("hostname", "")), str(obj.get("note", "")))
    except (ValueError, KeyError, TypeError) as exc:
        return _damaged(key, str(exc) or type(exc).__name__)


def protections(
    backend: Backend, point_ids: Collection[str] | None = None, *, log_damaged: bool = True
) -> dict[str, Protection]:
    """The protection records, by point id (only of ``point_ids`` when given): one list, plus
    one get per record.  A record that cannot be read still protects (``damaged`` set, logged
    unless ``log_damaged`` is false: the caller reports it); an object whose name is not a point
    id is logged and left out."""
    found: dict[str, Protection] = {}
    for key, _size in backend.list(PROTECTED_PREFIX):
        point_id = key.rsplit("/", 1)[-1]
        if point_ids is not None and point_id not in point_ids:
            continue
        if key != protection_key(point_id) or not _POINT_ID.fullmatch(point_id):
            log.warning("ignoring %s: not a protection record's name", key)
            continue
        try:
            data = backend.get(key)
        except StorageError as exc:
            found[point_id] = _damaged(key, exc.get_message())
            continue
        found[point_id] = _decode(key, data)
    if log_damaged:
        for protection in found.values():
            if protection.damaged:
                log.warning("%s", damaged_text(protection))
    return found


def refuse_protected(repo: Repository, point_ids: Collection[str]) -> None:
    """Raise :class:`PointProtected` for the first of ``point_ids`` that is protected."""
    held = protections(repo.backend, set(point_ids))
    for point_id in point_ids:
        if point_id in held:
            raise PointProtected(point_id[:8], held[point_id].describe())


def protect(repo: Repository, point_ids: Sequence[str], note: str = "") -> list[Protection]:
    """Protect ``point_ids`` (full ids of existing points) under a shared lock; returns the
    records written.  Protecting a protected point replaces its note and time."""
    if len(note) > MAX_NOTE:
        from vmkeep.errors import UsageError

        raise UsageError(f"the note is longer than {MAX_NOTE} characters")
    with repo.lock("shared", command="protect"):
        for point_id in point_ids:
            repo.resolve(point_id)  # PointNotFound for a point that does not exist (any kind)
            repo.backend.put(protection_key(point_id), encode(point_id, note))
        held = protections(repo.backend, set(point_ids))
    return [held[p] for p in point_ids if p in held]


def unprotect(repo: Repository, point_ids: Sequence[str]) -> list[str]:
    """Remove the protection of ``point_ids`` under a shared lock; returns those that had one
    (unprotecting an unprotected point is not an error)."""
    with repo.lock("shared", command="unprotect"):
        had = protections(repo.backend, set(point_ids))
        for point_id in point_ids:
            repo.backend.delete(protection_key(point_id))
    return [p for p in point_ids if p in had]
