"""Prune: delete data no restore point references, repack mostly-unused packs.

Who may delete: only prune, under an **exclusive** repository lock (backups hold shared locks, so
no backup runs while prune deletes), and only objects older than the **grace period**
(default 24 h, by the target's modification times): a backup whose lock was wrongly judged
stale, or any writer that ignores locks, still has a day to publish the manifest that references
what it wrote.  Packs listed by an index file younger than the grace are protected too, and index
files younger than the grace are kept as they are.

Mark: every manifest is read and its blob ids collected — image/VM chunk tables and file
restore points (:mod:`vmkeep.storage.file_manifest`).  A manifest that does not decode, does not
match its name, or has a kind this code cannot enumerate makes prune **refuse to run**
(:class:`UnknownPointKind`, ``DataCorrupt``…): never delete what cannot be accounted for.

Sweep, in this order (each object put is atomic; see :mod:`vmkeep.storage.backend`):

1. ``repack``: referenced blobs of packs whose referenced share (by stored bytes) is below
   ``repack_below`` are verified (decoded, id checked) and copied into new packs;
2. ``index``: new index files are written listing every blob of every kept pack and of the new
   packs (marked ``"writer": "prune"`` in their metadata);
3. ``delete-indexes``: the superseded (older than the grace) index files are deleted;
4. ``delete-packs``: packs with no referenced blob, repacked packs, and packs no index lists
   (left by crashed backups) are deleted.

Deletions happen only after the new index is committed, so a kill -9 at any point leaves every
restore point restorable and ``check`` clean: before step 2 the new packs are merely
unreferenced; between 2 and 3 blobs are listed twice (allowed); during 3 and 4 every remaining
index entry still names an existing pack.  A later prune finishes the job.

Memory: the index and the referenced ids are held as Arrow arrays (≈ 100 bytes per blob), not as
Python objects; repacking holds one pack at a time.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from blake3 import blake3

from vmkeep import clock
from vmkeep.storage.codec import ID_SIZE, ZERO_ID
from vmkeep.storage.errors import DataCorrupt, StorageError, UnknownPointKind
from vmkeep.storage.index import INDEX_FORMAT, INDEX_VERSION, SCHEMA, decode_index
from vmkeep.storage.manifest import decode_point, point_key, read_header
from vmkeep.storage.pack import PackBuilder, PackEntry, pack_id_from_key, pack_key
from vmkeep.storage.repository import Repository

DEFAULT_GRACE = timedelta(hours=24)
#: Packs whose referenced share of stored bytes is below this are repacked.
DEFAULT_REPACK_BELOW = 0.5
#: At most this many entries per index file written by prune.
INDEX_ROWS = 500_000
Step = Callable[[str], None]

IMAGE_KINDS = frozenset({"image", "vm"})


@dataclass
class PruneReport:
    dry_run: bool = False
    points: int = 0
    referenced_blobs: int = 0
    indexed_blobs: int = 0
    packs: int = 0
    packs_protected: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    unindexed_packs_deleted: int = 0
    packs_reindexed: int = 0
    indexes_deleted: int = 0
    indexes_written: int = 0
    bytes_deleted: int = 0
    bytes_repacked: int = 0
    missing_blobs: int = 0
    duration_s: float = 0.0
    to_delete: list[str] = field(default_factory=list)
    to_repack: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("to_delete", "to_repack")}
        out["duration_s"] = round(self.duration_s, 3)
        return out


# -- mark ------------------------------------------------------------------------------------
def point_blob_ids(data: bytes, point_id: str) -> pa.Array:
    """The non-zero blob ids a manifest references (``binary(32)``, may repeat).

    Raises ``UnknownPointKind`` for kinds this code cannot enumerate and ``FormatError`` /
    ``DataCorrupt`` for damaged manifests — callers must then not delete anything.
    """
    key = point_key(point_id)
    if blake3(data).hexdigest() != point_id:
        raise DataCorrupt(key, "manifest content does not match its name")
    kind = read_header(data, key).get("kind")
    if kind in IMAGE_KINDS:
        point = decode_point(data, point_id)  # validates schema and tiling
        ids = b"".join(bytes(t.ids) for t in point.chunks.values())
    elif kind == "files":
        try:
            from vmkeep.storage.file_manifest import decode_file_point
        except ImportError:
            raise UnknownPointKind(point_id[:12], kind) from None
        ids = b"".join(e.chunk_ids for e in decode_file_point(data, point_id).entries)
    else:
        raise UnknownPointKind(point_id[:12], kind)
    arr = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(ID_SIZE), len(ids) // ID_SIZE, [None, pa.py_buffer(ids)]
    )
    return arr.filter(pc.not_equal(arr, pa.scalar(ZERO_ID, pa.binary(ID_SIZE))))


def referenced_blobs(repo: Repository, report: PruneReport) -> pa.Array:
    """Unique ids referenced by any restore point."""
    parts = []
    for point_id in repo.point_ids():
        parts.append(pc.unique(point_blob_ids(repo.backend.get(point_key(point_id)), point_id)))
        report.points += 1
    if not parts:
        return pa.array([], pa.binary(ID_SIZE))
    return pc.unique(pa.chunked_array(parts, pa.binary(ID_SIZE)).combine_chunks())


# -- plan ------------------------------------------------------------------------------------
@dataclass
class _Plan:
    index: pa.Table  # every entry of old index files whose pack exists, plus "used" column
    old_indexes: list[str]
    delete: set[bytes]
    repack: set[bytes]
    unindexed: list[str]
    rescued: int = 0  # unindexed packs found to hold referenced blobs: indexed again


def _load_indexes(
    repo: Repository, cutoff: float
) -> tuple[list[pa.Table], list[str], set[bytes], list[pa.Array]]:
    """Old index tables and keys, the packs young index files protect, and their blob ids."""
    tables, old, protected, young_ids = [], [], set(), []
    for key, _size, mtime in repo.backend.list_times("index"):
        table = decode_index(repo.backend.get(key), key).replace_schema_metadata(None)
        if mtime is None or mtime > cutoff:
            protected.update(pc.unique(table.column("pack_id")).to_pylist())
            young_ids.append(table.column("blob_id").combine_chunks())
        else:
            old.append(key)
            tables.append(table)
    return tables, old, protected, young_ids


def _plan(
    repo: Repository,
    referenced: pa.Array,
    grace: timedelta,
    repack_below: float,
    report: PruneReport,
) -> _Plan:
    cutoff = (clock.now() - grace).timestamp()
    packs: dict[bytes, tuple[int, float | None]] = {
        pack_id_from_key(k): (size, mtime) for k, size, mtime in repo.backend.list_times("packs")
    }
    report.packs = len(packs)
    tables, old_indexes, protected, young_ids = _load_indexes(repo, cutoff)
    protected |= {p for p, (_, mtime) in packs.items() if mtime is None or mtime > cutoff}
    protected &= packs.keys()
    report.packs_protected = len(protected)
    schema = SCHEMA.remove_metadata()
    index = pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
    existing = pa.array(list(packs), pa.binary(ID_SIZE))
    index = index.filter(pc.is_in(index.column("pack_id"), value_set=existing))
    used = pc.is_in(index.column("blob_id"), value_set=referenced)
    index = index.append_column("used", used)
    report.indexed_blobs = len(pc.unique(index.column("blob_id")))

    # referenced ids listed by no index (old ones: with an existing pack; young ones: as is)
    known = pc.unique(
        pa.chunked_array(
            [index.filter(used).column("blob_id").combine_chunks(), *young_ids],
            pa.binary(ID_SIZE),
        ).combine_chunks()
    )
    report.missing_blobs = _missing(referenced, known)

    stored = index.column("stored_length").cast(pa.uint64())
    per_pack = (
        pa.table(
            {
                "pack_id": index.column("pack_id"),
                "total": stored,
                "used": pc.if_else(used, stored, pa.scalar(0, pa.uint64())),
            }
        )
        .group_by("pack_id")
        .aggregate([("total", "sum"), ("used", "sum")])
    )
    delete: set[bytes] = set()
    repack: set[bytes] = set()
    for pack_id, total, used_bytes in zip(
        per_pack.column("pack_id").to_pylist(),
        per_pack.column("total_sum").to_pylist(),
        per_pack.column("used_sum").to_pylist(),
        strict=True,
    ):
        if pack_id in protected:
            continue
        if used_bytes == 0:
            delete.add(pack_id)
        elif total and used_bytes / total < repack_below:
            repack.add(pack_id)
    indexed = set(per_pack.column("pack_id").to_pylist())
    unindexed = [pack_key(p) for p in packs if p not in indexed and p not in protected]
    # an unindexed pack may hold the only copy of a referenced blob (e.g. a lost index file):
    # then it is kept and indexed rather than deleted.
    rescued = 0
    if report.missing_blobs and unindexed:
        before = len(unindexed)
        index, unindexed = _rescue_unindexed(repo, index, referenced, unindexed, report)
        rescued = before - len(unindexed)
    return _Plan(index, old_indexes, delete, repack, unindexed, rescued)


def _rescue_unindexed(
    repo: Repository,
    index: pa.Table,
    referenced: pa.Array,
    unindexed: list[str],
    report: PruneReport,
) -> tuple[pa.Table, list[str]]:
    from vmkeep.storage.pack import parse_pack

    ref = set(referenced.to_pylist())
    rows: list[tuple[bytes, PackEntry]] = []
    still = []
    for key in unindexed:
        try:
            entries = parse_pack(repo.backend.get(key), key, repo.cipher)
        except StorageError:
            still.append(key)
            continue
        if any(e.blob_id in ref for e in entries):
            pack_id = pack_id_from_key(key)
            rows.extend((pack_id, e) for e in entries)
        else:
            still.append(key)
    if rows:
        extra = _entries_table(rows)
        used = pc.is_in(extra.column("blob_id"), value_set=referenced)
        index = pa.concat_tables([index, extra.append_column("used", used)])
        known = index.filter(index.column("used")).column("blob_id").combine_chunks()
        report.missing_blobs = min(report.missing_blobs, _missing(referenced, known))
    return index, still


def _missing(referenced: pa.Array, known: pa.Array) -> int:
    """How many ``referenced`` ids are not in ``known``."""
    return len(referenced) - int(pc.sum(pc.is_in(referenced, value_set=known)).as_py() or 0)


def _entries_table(rows: list[tuple[bytes, PackEntry]]) -> pa.Table:
    return pa.table(
        [
            pa.array([e.blob_id for _, e in rows], pa.binary(ID_SIZE)),
            pa.array([p for p, _ in rows], pa.binary(ID_SIZE)),
            pa.array([e.offset for _, e in rows], pa.uint64()),
            pa.array([e.stored_length for _, e in rows], pa.uint32()),
            pa.array([e.raw_length for _, e in rows], pa.uint32()),
            pa.array([e.codec for _, e in rows], pa.uint8()),
        ],
        schema=SCHEMA.remove_metadata(),
    )


# -- sweep -----------------------------------------------------------------------------------
def _repack(
    repo: Repository, plan: _Plan, report: PruneReport, step: Step
) -> tuple[list[tuple[bytes, PackEntry]], set[bytes]]:
    """Copy the referenced blobs of ``plan.repack`` packs into new packs; returns their entries
    and the packs to keep after all.  Blobs also stored in a kept pack are not copied.  A pack
    holding a referenced blob that fails verification is kept as it is (``check`` reports it;
    prune never deletes the only, if damaged, copy)."""
    index = plan.index
    gone = pa.array(list(plan.repack | plan.delete), pa.binary(ID_SIZE))
    in_gone = pc.is_in(index.column("pack_id"), value_set=gone)
    have = set(index.filter(pc.invert(in_gone)).column("blob_id").to_pylist())
    written: list[tuple[bytes, PackEntry]] = []
    kept_back: set[bytes] = set()
    builder = PackBuilder()

    def seal() -> None:
        nonlocal builder
        if not builder.entries:
            return
        pack_id, data, entries = builder.finish(repo.cipher)
        repo.backend.put(pack_key(pack_id), data)
        written.extend((pack_id, e) for e in entries)
        report.packs_written += 1
        builder = PackBuilder()
        step("repack-pack-written")

    for pack_id in sorted(plan.repack):
        rows = index.filter(
            pc.and_(
                pc.equal(index.column("pack_id"), pa.scalar(pack_id, pa.binary(ID_SIZE))),
                index.column("used"),
            )
        )
        key = pack_key(pack_id)
        data = repo.backend.get(key)
        for blob_id, offset, stored, raw, codec in zip(
            *(
                rows.column(n).to_pylist()
                for n in ("blob_id", "offset", "stored_length", "raw_length", "codec")
            ),
            strict=True,
        ):
            if blob_id in have:
                continue
            payload = data[offset : offset + stored]
            try:
                repo.decode_payload(blob_id, codec, payload, raw, key)
            except StorageError:
                kept_back.add(pack_id)
                continue
            builder.add(blob_id, codec, payload, raw)
            have.add(blob_id)
            report.bytes_repacked += len(payload)
            if len(builder) >= repo.config.pack_size:
                seal()
    seal()
    return written, kept_back


def _write_index(repo: Repository, table: pa.Table, report: PruneReport, step: Step) -> set[str]:
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "writer": "prune"}
    schema = SCHEMA.with_metadata({b"vmkeep": json.dumps(meta).encode()})
    written = set()
    for start in range(0, max(len(table), 1), INDEX_ROWS):
        part = table.slice(start, INDEX_ROWS)
        if len(part) == 0:
            break
        sink = io.BytesIO()
        pq.write_table(part.cast(schema), sink, compression="zstd")
        data = sink.getvalue()
        key = f"index/{blake3(data).hexdigest()}.parquet"
        repo.backend.put(key, data)
        written.add(key)
        report.indexes_written += 1
        step("index-written")
    return written


def prune(
    repo: Repository,
    *,
    grace: timedelta = DEFAULT_GRACE,
    repack_below: float = DEFAULT_REPACK_BELOW,
    dry_run: bool = False,
    lock: bool = True,
    step: Step | None = None,
) -> PruneReport:
    """Prune ``repo`` (see the module docstring).  Takes the exclusive lock unless ``lock`` is
    false (the caller holds it) or ``dry_run``.  ``step(name)`` is called after each step (tests
    kill the process there)."""
    started = time.monotonic()
    report = PruneReport(dry_run=dry_run)
    on = step or (lambda name: None)
    held = repo.lock("exclusive", command="prune") if lock and not dry_run else None
    try:
        on("locked")
        referenced = referenced_blobs(repo, report)
        report.referenced_blobs = len(referenced)
        plan = _plan(repo, referenced, grace, repack_below, report)
        doomed = plan.delete | plan.repack
        report.to_delete = [pack_key(p) for p in sorted(plan.delete)] + plan.unindexed
        report.to_repack = [pack_key(p) for p in sorted(plan.repack)]
        report.packs_repacked = len(plan.repack)
        report.packs_deleted = len(plan.delete) + len(plan.repack)
        report.unindexed_packs_deleted = len(plan.unindexed)
        report.packs_reindexed = plan.rescued
        work = bool(doomed or plan.unindexed or plan.rescued)
        report.indexes_deleted = len(plan.old_indexes) if work else 0
        on("planned")
        if dry_run or not work:
            return report
        new_entries, kept_back = _repack(repo, plan, report, on)
        doomed -= kept_back
        report.packs_repacked -= len(kept_back)
        report.packs_deleted -= len(kept_back)
        on("repacked")
        index = plan.index
        keep = pc.invert(
            pc.is_in(index.column("pack_id"), value_set=pa.array(list(doomed), pa.binary(ID_SIZE)))
        )
        kept = index.filter(keep).drop_columns(["used"])
        if new_entries:
            kept = pa.concat_tables([kept, _entries_table(new_entries)])
        if held is not None:
            held.ensure()
        new_indexes = _write_index(repo, kept, report, on)
        on("indexed")
        # names are content hashes: an unchanged index is rewritten under its own name
        for key in [k for k in plan.old_indexes if k not in new_indexes]:
            repo.backend.delete(key)
            on("index-deleted")
        # never delete a pack the new index lists (a repack can re-create, byte for byte, a
        # pack that a killed earlier prune wrote and that looked unindexed when we planned)
        listed = {pack_key(p) for p in pc.unique(kept.column("pack_id")).to_pylist()}
        sizes = dict(repo.backend.list("packs"))
        doomed_keys = [pack_key(p) for p in sorted(doomed)] + plan.unindexed
        for key in [k for k in doomed_keys if k not in listed]:
            report.bytes_deleted += sizes.get(key, 0)
            repo.backend.delete(key)
            on("pack-deleted")
        on("done")
        repo._index = None  # the next use reloads the rewritten index
        return report
    finally:
        report.duration_s = time.monotonic() - started
        if held is not None:
            held.release()
