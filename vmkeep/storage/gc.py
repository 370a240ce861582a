"""Garbage collection beside backups and readers: deletion records and the lease rule (GC v2).

Prune (:mod:`vmkeep.storage.prune`) deletes a pack in three stages, each separated from the next
by the **lease rule**: a stage stamped at ``time`` may be followed by the next one only once every
live lease (``locks/`` of kind ``shared`` — backups, forget — or ``read`` — restores, mounts,
verification, exports; see :mod:`vmkeep.storage.locks`) was created after ``time``.  Records are
objects ``gc/<32 hex>`` (JSON, encrypted like every object in an encrypted repository)::

    {"format": "vmkeep-gc-pending", "version": 2, "state": "condemned" | "unlisted",
     "time": ISO-8601 UTC, "hostname": str, "packs": ["<64 hex pack id>", ...],
     "provisional": true,                       # optional: only while being stored
     "mtimes": {"<64 hex pack id>": float | null}}  # optional: each pack's time when recorded

**A record's time follows its visibility.**  A lease's ``created`` is read from the clock before
the lease is stored, and its holder reads the records after that; so a holder that did not see a
record has a lease created before the record became visible.  The lease rule is therefore only
sound when ``time`` is *after* the record became visible: :func:`write_record` stores the record
``provisional`` first, then stores it again stamped with the time read after that put returned.
A provisional record (a prune killed between the two puts) is re-stamped by the next prune
before it judges anything by it (:func:`confirm_provisional`); its packs are excluded from
deduplication from the first put on.

1. **condemned** — the pack holds no referenced chunk, or its referenced chunks were copied into
   new packs (repack; their index file is written first).  The pack stays in the index, so every
   reader can still use it, but whoever loads the index after the record exists never
   deduplicates against it (backups store such chunks again).
2. **unlisted** — once no lease predates the condemnation, prune lists the manifests again:
   every backup that could have deduplicated against the pack has ended, so its point is among
   them.  A condemned pack holding a chunk some point references and no other pack (not
   condemned) holds is **revived** (dropped from the record).  The others are dropped from the
   index (rewritten index files; the old ones are deleted after the new ones are written) and
   recorded as unlisted.  Packs that no index lists at all (left by crashed backups, older than
   the grace) are recorded as unlisted directly.
3. **deleted** — once no lease predates the unlisting, no process can have seen the pack in an
   index: a pack still unlisted, present and older than the grace period is deleted.

A backup that lost its lease (or did not refresh it for half the stale time) refuses to commit
(:meth:`vmkeep.storage.locks.Lock.ensure`), so a lease that prune ignored as stale never protects
a point that gets committed.  A kill -9 anywhere leaves records whose packs are either still
present (a later prune finishes) or gone (the record is dropped); a pack named by a record that
an index lists again (rescued) is handled by the stage it is in.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime

from vmkeep import clock
from vmkeep.storage.backend import Backend
from vmkeep.storage.errors import ObjectNotFound, StorageError

log = logging.getLogger(__name__)

GC_PREFIX = "gc"
GC_FORMAT = "vmkeep-gc-pending"
#: The garbage-collection protocol version (docs/format.md, "Garbage collection").
GC_VERSION = 2


CONDEMNED = "condemned"
UNLISTED = "unlisted"


@dataclass
class PendingRecord:
    """A deletion record: ``packs`` were condemned (or unlisted) at ``time``."""

    key: str
    time: datetime
    packs: set[bytes]
    state: str = UNLISTED
    #: stored, but its ``time`` may precede its visibility (see the module docstring)
    provisional: bool = False
    #: each pack's modification time when it was recorded (``None``: unknown)
    mtimes: dict[bytes, float | None] = field(default_factory=dict)


def encode_record(
    time: datetime,
    packs: set[bytes],
    state: str = UNLISTED,
    *,
    provisional: bool = False,
    mtimes: dict[bytes, float | None] | None = None,
) -> bytes:
    obj: dict[str, object] = {
        "format": GC_FORMAT,
        "version": GC_VERSION,
        "state": state,
        "time": time.isoformat(),
        "hostname": socket.gethostname(),
        "packs": sorted(p.hex() for p in packs),
    }
    if provisional:
        obj["provisional"] = True
    if mtimes:
        obj["mtimes"] = {p.hex(): mtimes[p] for p in sorted(packs) if p in mtimes}
    return json.dumps(obj).encode()


def decode_record(key: str, data: bytes) -> PendingRecord:
    obj = json.loads(data)
    if not isinstance(obj, dict) or obj.get("format") != GC_FORMAT:
        raise ValueError("not a deletion record")
    if obj.get("version") != GC_VERSION:
        raise ValueError(f"unknown version {obj.get('version')!r}")
    packs = {bytes.fromhex(p) for p in obj["packs"]}
    if any(len(p) != 32 for p in packs):
        raise ValueError("bad pack id")
    when = datetime.fromisoformat(obj["time"])
    if when.tzinfo is None:
        raise ValueError("time without a zone")
    state = obj.get("state")
    if state not in (CONDEMNED, UNLISTED):
        raise ValueError(f"unknown state {state!r}")
    mtimes: dict[bytes, float | None] = {}
    for hexid, mtime in (obj.get("mtimes") or {}).items():
        if mtime is not None and not isinstance(mtime, (int, float)):
            raise ValueError("bad pack time")
        mtimes[bytes.fromhex(hexid)] = None if mtime is None else float(mtime)
    return PendingRecord(key, when, packs, state, obj.get("provisional") is True, mtimes)


def load_records(backend: Backend) -> list[PendingRecord]:
    """Every readable deletion record.  One that does not decode is logged and ignored: its
    packs are then merely unlisted, and get a new record (a later ``time``: safe)."""
    out = []
    for key, _size in backend.list(GC_PREFIX):
        try:
            out.append(decode_record(key, backend.get(key)))
        except ObjectNotFound:
            continue
        except (StorageError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring deletion record %s: %s", key, exc)
    return sorted(out, key=lambda r: r.time)


def write_record(
    backend: Backend,
    packs: set[bytes],
    state: str,
    mtimes: dict[bytes, float | None] | None = None,
) -> PendingRecord:
    """Record ``packs`` as ``state`` (condemned, or already unlisted), stamped with a time read
    once the record is visible (two puts; see the module docstring), with the packs'
    modification times as prune listed them (``mtimes``: see :func:`rewritten`)."""
    key = f"{GC_PREFIX}/{secrets.token_hex(16)}"
    kept = {p: mtimes[p] for p in packs if mtimes and p in mtimes}
    backend.put(key, encode_record(clock.now(), packs, state, provisional=True, mtimes=kept))
    when = clock.now()  # read after the put returned: every later lease sees the record
    backend.put(key, encode_record(when, packs, state, mtimes=kept))
    return PendingRecord(key, when, set(packs), state, False, kept)


def rewritten(record: PendingRecord, current: dict[bytes, float | None]) -> set[bytes]:
    """The record's packs stored again since they were recorded: present with a modification
    time other than the recorded one.  Pack ids are content hashes, so a backup that stores the
    chunks of a condemned pack again, in the same order, writes a pack with the same id; that
    pack is the backup's now and must leave the record (prune revives it)."""
    return {
        p
        for p in record.packs
        if record.mtimes.get(p) is not None and p in current and current[p] != record.mtimes[p]
    }


def confirm_provisional(backend: Backend, records: list[PendingRecord]) -> None:
    """Re-stamp provisional ``records`` (left by a prune killed between its two puts) with the
    time now, read after they were loaded, hence visible; only the prune lock holder calls this."""
    for record in records:
        if record.provisional:
            record.time = clock.now()
            record.provisional = False
            backend.put(
                record.key,
                encode_record(record.time, record.packs, record.state, mtimes=record.mtimes),
            )


def recorded_packs(records: list[PendingRecord]) -> set[bytes]:
    """Every pack some record names: readers and writers never deduplicate against these."""
    out: set[bytes] = set()
    for record in records:
        out |= record.packs
    return out


def update_record(backend: Backend, record: PendingRecord, remaining: set[bytes]) -> None:
    """Keep ``remaining`` of ``record``'s packs (same time); delete the record when none is."""
    if remaining == record.packs:
        return
    if remaining:
        backend.put(
            record.key,
            encode_record(
                record.time,
                remaining,
                record.state,
                provisional=record.provisional,
                mtimes=record.mtimes,
            ),
        )
    else:
        backend.delete(record.key)
    record.packs = set(remaining)
