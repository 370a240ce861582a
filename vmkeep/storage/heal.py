"""Damage records: chunks ``check`` found corrupt or missing, so the next backup re-stores them.

``check`` writes what it found damaged to ``damaged/<32 hex>`` (JSON, encrypted like every object
in an encrypted repository)::

    {"format": "vmkeep-damage", "version": 1, "time": ISO-8601 UTC, "hostname": str,
     "entries": [{"blob": "<64 hex chunk id>", "pack": "<64 hex>" | null, "kind": str}, ...]}

``pack`` is where the index said the chunk was (``null``: no index listed it).  Everyone who loads
the index (:meth:`vmkeep.storage.repository.Repository.load_index`, ``check``) leaves those
(chunk, pack) locations out, so a backup that reads the same data does not deduplicate against
the damaged copy: it stores the chunk again, in a new pack, under a new index entry (restic and
PBS behave the same way).  Restores then read the new copy.  The next ``check`` finds a healthy
location for the chunk, reports the points that used it as **healed**, and drops the entry; a
record whose entries are all healed is deleted.  Records never delete data: a damaged pack stays
until prune finds it unreferenced (its healthy blobs keep it otherwise; a corrupt copy is never
repacked).
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from dataclasses import dataclass

import pyarrow as pa

from vmkeep import clock
from vmkeep.storage.backend import Backend
from vmkeep.storage.errors import ObjectNotFound, StorageError

log = logging.getLogger(__name__)

DAMAGED_PREFIX = "damaged"
DAMAGE_FORMAT = "vmkeep-damage"
DAMAGE_VERSION = 1


@dataclass(frozen=True)
class Damage:
    blob: bytes
    pack: bytes | None
    kind: str
    #: when a check found a sound copy elsewhere (the location stays excluded)
    healed: str | None = None


@dataclass
class DamageRecord:
    key: str
    entries: list[Damage]


def _encode(entries: list[Damage]) -> bytes:
    return json.dumps(
        {
            "format": DAMAGE_FORMAT,
            "version": DAMAGE_VERSION,
            "time": clock.now().isoformat(),
            "hostname": socket.gethostname(),
            "entries": [
                {
                    "blob": d.blob.hex(),
                    "pack": d.pack.hex() if d.pack else None,
                    "kind": d.kind,
                    **({"healed": d.healed} if d.healed else {}),
                }
                for d in entries
            ],
        }
    ).encode()


def _decode(key: str, data: bytes) -> DamageRecord:
    obj = json.loads(data)
    if not isinstance(obj, dict) or obj.get("format") != DAMAGE_FORMAT:
        raise ValueError("not a damage record")
    if obj.get("version") != DAMAGE_VERSION:
        raise ValueError(f"unknown version {obj.get('version')!r}")
    entries = []
    for e in obj["entries"]:
        blob = bytes.fromhex(e["blob"])
        pack = bytes.fromhex(e["pack"]) if e.get("pack") else None
        if len(blob) != 32 or (pack is not None and len(pack) != 32):
            raise ValueError("bad id")
        healed = e.get("healed")
        entries.append(
            Damage(blob, pack, str(e.get("kind", "")), healed if isinstance(healed, str) else None)
        )
    return DamageRecord(key, entries)


def load_damage(backend: Backend) -> list[DamageRecord]:
    """Every readable damage record (an unreadable one is logged and ignored)."""
    out = []
    for key, _size in backend.list(DAMAGED_PREFIX):
        try:
            out.append(_decode(key, backend.get(key)))
        except ObjectNotFound:
            continue
        except (StorageError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring damage record %s: %s", key, exc)
    return out


def damaged_locations(records: list[DamageRecord]) -> set[tuple[bytes, bytes]]:
    """The (chunk, pack) locations nobody may use."""
    return {(d.blob, d.pack) for r in records for d in r.entries if d.pack is not None}


def record_damage(backend: Backend, entries: list[Damage]) -> None:
    """Write a new damage record (best effort: a read-only repository only logs)."""
    if not entries:
        return
    try:
        backend.put(f"{DAMAGED_PREFIX}/{secrets.token_hex(16)}", _encode(entries))
    except (StorageError, OSError) as exc:
        log.warning("could not record damage for the next backup to heal: %s", exc)


def update_damage(
    backend: Backend, record: DamageRecord, healed: set[bytes], repaired: set[bytes]
) -> None:
    """Mark the ``healed`` chunks of ``record`` healed (their damaged location stays excluded:
    old index files still list it) and drop the ``repaired`` ones (their location verifies
    again); delete the record when nothing is left."""
    now = clock.now().isoformat()
    left = [
        Damage(d.blob, d.pack, d.kind, d.healed or now) if d.blob in healed else d
        for d in record.entries
        if d.blob not in repaired
    ]
    if left == record.entries:
        return
    try:
        if left:
            backend.put(record.key, _encode(left))
        else:
            backend.delete(record.key)
    except (StorageError, OSError) as exc:
        log.warning("could not update damage record %s: %s", record.key, exc)


def usable_rows(
    table: pa.Table, missing_packs: set[bytes], damaged: set[tuple[bytes, bytes]]
) -> pa.Table:
    """``table`` (index rows) without rows in ``missing_packs`` or at ``damaged`` locations."""
    import pyarrow.compute as pc  # here, not at import: most index loads have neither

    if missing_packs:
        gone = pa.array(list(missing_packs), pa.binary(32))
        table = table.filter(pc.invert(pc.is_in(table.column("pack_id"), value_set=gone)))
    if damaged and len(table):
        blobs = pa.array(list({b for b, _ in damaged}), pa.binary(32))
        suspect = pc.is_in(table.column("blob_id"), value_set=blobs)
        if pc.any(suspect).as_py():
            ids = table.column("blob_id").to_pylist()
            packs = table.column("pack_id").to_pylist()
            keep = [(b, p) not in damaged for b, p in zip(ids, packs, strict=True)]
            table = table.filter(pa.array(keep, pa.bool_()))
    return table


def set_aside_rows(
    table: pa.Table, packs: set[bytes], damaged: set[tuple[bytes, bytes]]
) -> pa.Table:
    """The rows of ``table`` in ``packs`` or at ``damaged`` locations (what :func:`usable_rows`
    leaves out besides missing packs)."""
    import pyarrow.compute as pc

    mask = pc.is_in(table.column("pack_id"), value_set=pa.array(list(packs), pa.binary(32)))
    if damaged and len(table):
        ids = table.column("blob_id").to_pylist()
        pk = table.column("pack_id").to_pylist()
        pairs = pa.array([(b, p) in damaged for b, p in zip(ids, pk, strict=True)], pa.bool_())
        mask = pc.or_(mask, pairs)
    return table.filter(mask)
