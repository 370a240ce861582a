"""Garbage collection beside backups and readers: deletion records and the lease rule (GC v2).

Prune (:mod:`vmkeep.storage.prune`) never deletes a pack in the run that takes it out of the
index.  It first makes the pack **unlisted** (no index file names it any more: a rewritten index
drops it, or it was never indexed — left by a crashed backup), then writes a **deletion record**
``gc/<32 hex>`` (JSON, encrypted like every object in an encrypted repository)::

    {"format": "vmkeep-gc-pending", "version": 2, "time": ISO-8601 UTC, "hostname": str,
     "packs": ["<64 hex pack id>", ...]}

``time`` is taken *after* the packs became unlisted, so whoever lists the index after ``time``
cannot see them: a backup that takes its lease later never deduplicates against them (it stores
those chunks again), a reader that takes its lease later never reads them.

A recorded pack is deleted (by this prune run or any later one) only when, in this order:

1. it is still unlisted and older than the grace period (by the target's modification time);
2. every live **lease** (``locks/`` of kind ``shared`` — backups, forget — or ``read`` —
   restores, mounts, verification, exports; see :mod:`vmkeep.storage.locks`) was created after
   ``time``: nobody who might have seen the pack in an index is still running;
3. the manifests published since prune's mark phase are read, and a pack holding a chunk one of
   them references that no index lists (a backup deduplicated against the pack before it was
   unlisted and committed since) is **rescued**: indexed again instead of deleted.

A backup that lost its lease (or did not refresh it for half the stale time) refuses to commit
(:meth:`vmkeep.storage.locks.Lock.ensure`), so a lease that prune ignored as stale never protects
a point that gets committed.  A kill -9 anywhere leaves records whose packs are either still
present (a later prune finishes) or gone (the record is dropped).  Records naming packs that an
index lists again (rescued) simply lose those packs.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime

from vmkeep import clock
from vmkeep.storage.backend import Backend
from vmkeep.storage.errors import ObjectNotFound, StorageError

log = logging.getLogger(__name__)

GC_PREFIX = "gc"
GC_FORMAT = "vmkeep-gc-pending"
#: The garbage-collection protocol version (docs/format.md, "Garbage collection").
GC_VERSION = 2


@dataclass
class PendingRecord:
    """A deletion record: ``packs`` left the index before ``time``."""

    key: str
    time: datetime
    packs: set[bytes]


def encode_record(time: datetime, packs: set[bytes]) -> bytes:
    return json.dumps(
        {
            "format": GC_FORMAT,
            "version": GC_VERSION,
            "time": time.isoformat(),
            "hostname": socket.gethostname(),
            "packs": sorted(p.hex() for p in packs),
        }
    ).encode()


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
    return PendingRecord(key, when, packs)


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


def write_record(backend: Backend, packs: set[bytes]) -> PendingRecord:
    """Record ``packs`` (already unlisted) as pending deletion, stamped now."""
    when = clock.now()
    key = f"{GC_PREFIX}/{secrets.token_hex(16)}"
    backend.put(key, encode_record(when, packs))
    return PendingRecord(key, when, set(packs))


def update_record(backend: Backend, record: PendingRecord, remaining: set[bytes]) -> None:
    """Keep ``remaining`` of ``record``'s packs (same time); delete the record when none is."""
    if remaining == record.packs:
        return
    if remaining:
        backend.put(record.key, encode_record(record.time, remaining))
    else:
        backend.delete(record.key)
    record.packs = set(remaining)
