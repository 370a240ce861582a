"""Prune: delete data no restore point references, repack mostly-unused packs, clear leftovers.

Runs **beside** backups and readers (the garbage-collection protocol, GC version 2, of
``docs/format.md``): prune takes a ``prune`` lock (one prune at a time; it conflicts with no
backup or reader), and deletes a pack only through a deletion record once no lease that might
have seen it in an index is live (:mod:`vmkeep.storage.gc`).  Only objects older than the
**grace period** (default :data:`DEFAULT_GRACE`, by the target's modification times) are
deleted: a second belt for writers that ignore leases or clocks that disagree.  Packs listed by an
index file younger than the grace are protected too, and index files younger than the grace are
kept as they are.

Mark: every manifest is read and its blob ids collected — image/VM chunk tables (only the columns
needed, as Arrow arrays: :func:`vmkeep.storage.manifest.iter_blob_ids`) and file restore points
(:mod:`vmkeep.storage.file_manifest`).  A manifest that does not decode, does not match its name,
or has a kind this code cannot enumerate makes prune **refuse to run** (:class:`UnknownPointKind`,
``DataCorrupt``…): never delete what cannot be accounted for.

Sweep, in this order (each object put is atomic; see :mod:`vmkeep.storage.backend`), the three
stages of :mod:`vmkeep.storage.gc`:

Compression units (repository version 4): a unit's pieces share one payload, so a unit is
kept, whole, while any of its pieces is referenced — all its entries count as used — and a
repack copies the unit's payload once with all its entries.  Stored bytes are attributed to
pieces in proportion to their length (:func:`stored_share`), so a pack's referenced share
counts each unit once.

1. ``repack``: referenced blobs of packs whose referenced share (by stored bytes) is below
   ``repack_below``, and then of the packs with the most unused bytes while the unused bytes of
   the kept packs exceed ``max_unused`` of their total (like restic's ``--max-unused``), are
   verified (decoded, id checked) and copied into new packs, listed by a new index file
   (``"writer": "prune"`` in its metadata);
2. ``condemn``: those packs and the packs with no referenced blob get a ``condemned`` record;
   packs no index lists (left by crashed backups) an ``unlisted`` one;
3. ``unlist``: condemned packs whose record is older than every live lease are revived if a point
   (listed again now) needs a chunk only they hold, else dropped from the index: the old (older
   than the grace) index files are written again without them, the old files deleted, and an
   ``unlisted`` record written;
4. ``delete-packs``: unlisted packs whose record is older than every live lease are deleted;
5. ``delete-catalogs``: derived objects (file-name catalogs ``catalog/<point id>.parquet``,
   verification records ``verifications/<point id>/…``, protection records
   ``protected/<point id>``) whose restore point has no manifest (listed under the lock; a
   catalog is rebuilt on demand, so its age does not matter);
6. ``delete-temporary``: temporary objects (``.vmkeep-tmp-…`` names, see
   :meth:`~vmkeep.storage.backend.Backend.list_temporary`) that crashed writers left on file-system
   targets, once older than the grace, than :data:`TEMP_MIN_AGE` *and* than every live lease — a
   temporary name may also be a write in flight (a backup's pack, a lock being taken);
7. ``delete-tombstones``: tombstones of forgotten points older than
   :data:`~vmkeep.storage.forget.TOMBSTONE_TTL` (90 days; see :mod:`vmkeep.storage.known_state`
   for what that means for rollback detection).

A kill -9 at any point leaves every restore point restorable and ``check`` clean: new packs are
indexed before anything is condemned; while index files are rewritten blobs are listed twice
(allowed) and every remaining entry names an existing pack; only unlisted packs are deleted;
catalogs and temporary objects are never read by a restore.  A later prune finishes the job.

Memory: about 100 bytes per indexed blob (8 of them the unit columns of index version 2), held
as Arrow arrays, never as Python objects: the index (old index files filtered to existing
packs, kept file by file with rows grouped by id bucket) and the referenced ids (deduplicated
as manifests are read).  Hash tables (dedup, membership) are built per id bucket
(:data:`BUCKETS`, by the low bits of the last id byte), so the largest transient one covers
1/16 of the ids.  Each manifest is streamed in row batches; repacking holds one pack at a time;
new index files are written :data:`INDEX_ROWS` at a time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from blake3 import blake3

from vmkeep import clock
from vmkeep.storage import gc
from vmkeep.storage.catalogs import CATALOG_PREFIX, catalog_point
from vmkeep.storage.codec import CODEC_UNIT, ID_SIZE, ZERO_ID
from vmkeep.storage.errors import (
    DataCorrupt,
    FormatError,
    ObjectNotFound,
    StorageError,
    UnknownPointKind,
)
from vmkeep.storage.index import (
    INDEX_FORMAT,
    entries_table,
    for_version,
    id_list,
    index_schema,
    read_index,
)
from vmkeep.storage.locks import PRUNE, live_leases
from vmkeep.storage.manifest import iter_blob_ids, point_key, read_header
from vmkeep.storage.pack import (
    PackBuilder,
    PackEntry,
    is_pack_key,
    list_packs,
    pack_id_from_key,
    pack_key,
    parse_pack,
)
from vmkeep.storage.protection import PROTECTED_PREFIX
from vmkeep.storage.recipes import RecipeTable
from vmkeep.storage.repository import Repository

#: Leases protect running backups and readers; the grace is a second belt (see the docstring).
DEFAULT_GRACE = timedelta(hours=4)
#: Temporary objects younger than this are never deleted, whatever the grace.
TEMP_MIN_AGE = timedelta(hours=1)
#: Packs whose referenced share of stored bytes is below this are repacked.
DEFAULT_REPACK_BELOW = 0.5
#: Repack (most unused first) while unused bytes exceed this share of the kept packs' bytes.
DEFAULT_MAX_UNUSED = 0.10
#: At most this many entries per index file written by prune.
INDEX_ROWS = 500_000
#: Ids are split into this many buckets (a power of two) for dedup and membership tests.
BUCKETS = 16
#: Pending (not yet deduplicated) referenced ids are folded in once there are this many, or as
#: many as already folded.
FOLD_ROWS = 1 << 20
Step = Callable[[str], None]

IMAGE_KINDS = frozenset({"image", "vm"})
ID_TYPE = pa.binary(ID_SIZE)
_ZERO = pa.scalar(ZERO_ID, ID_TYPE)


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
    catalogs_deleted: int = 0
    tombstones_deleted: int = 0
    temp_files_deleted: int = 0
    temp_bytes_deleted: int = 0
    #: bytes of the new packs repacking wrote
    bytes_written: int = 0
    #: what this run freed: bytes of deleted packs minus bytes of the new packs
    bytes_freed: int = 0
    #: unreferenced bytes (and packs) that the grace period holds back
    bytes_held_by_grace: int = 0
    packs_held_by_grace: int = 0
    #: unlisted packs waiting for leases older than their deletion record to end
    packs_held_by_leases: int = 0
    bytes_held_by_leases: int = 0
    held_by: list[str] = field(default_factory=list)
    packs_rescued: int = 0
    #: condemned packs dropped from the index this run / revived (a new point needs them)
    packs_unlisted: int = 0
    packs_revived: int = 0
    duration_s: float = 0.0
    to_delete: list[str] = field(default_factory=list)
    to_repack: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("to_delete", "to_repack")}
        out["duration_s"] = round(self.duration_s, 3)
        out["gc_version"] = gc.GC_VERSION
        return out


# -- id buckets ------------------------------------------------------------------------------
def _buckets(ids: pa.Array) -> pa.Array:
    """The bucket (``uint8``) of every id of a ``binary(32)`` array: low bits of its last byte."""
    n = len(ids)
    if n == 0:
        return pa.array([], pa.uint8())
    start = ids.offset * ID_SIZE + ID_SIZE - 1
    last = memoryview(ids.buffers()[1])[start : start + n * ID_SIZE : ID_SIZE].tobytes()
    column = pa.UInt8Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(last)])
    return pc.bit_wise_and(column, pa.scalar(BUCKETS - 1, pa.uint8()))


def _group(rows: Any, ids: pa.Array) -> tuple[Any, list[int]]:
    """``rows`` (an array or table aligned with ``ids``) reordered so that bucket ``b`` is rows
    ``bounds[b]:bounds[b + 1]``."""
    buckets = _buckets(ids)
    order = pc.sort_indices(buckets)
    counts = [0] * BUCKETS
    for item in pc.value_counts(buckets).to_pylist():
        counts[item["values"]] = item["counts"]
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    return rows.take(order), bounds


def _part(rows: Any, bounds: list[int], b: int) -> Any:
    return rows.slice(bounds[b], bounds[b + 1] - bounds[b])


class RefSet:
    """The unique referenced ids, one Arrow array per bucket, built incrementally."""

    def __init__(self) -> None:
        self.parts: list[pa.Array] = [pa.array([], ID_TYPE)] * BUCKETS
        self._pending: list[list[pa.Array]] = [[] for _ in range(BUCKETS)]
        self._pending_rows = 0

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def add(self, ids: pa.Array) -> None:
        """Add ``binary(32)`` ids (no NULLs; repeats allowed)."""
        ids = pc.unique(ids)
        grouped, bounds = _group(ids, ids)
        for b in range(BUCKETS):
            if bounds[b + 1] > bounds[b]:
                self._pending[b].append(_part(grouped, bounds, b))
        self._pending_rows += len(ids)
        if self._pending_rows >= max(len(self), FOLD_ROWS):
            self.fold()

    def fold(self) -> None:
        """Deduplicate the pending ids into :attr:`parts` (one bucket at a time)."""
        for b in range(BUCKETS):
            if self._pending[b]:
                chunks = pa.chunked_array([self.parts[b], *self._pending[b]], ID_TYPE)
                self.parts[b] = pc.unique(chunks)
                self._pending[b] = []
        self._pending_rows = 0

    def contains(self, ids: pa.Array) -> pa.Array:
        """A boolean array: which of ``ids`` (any order) are referenced."""
        grouped, bounds = _group(pa.array(range(len(ids)), pa.int64()), ids)
        sorted_ids = ids.take(grouped)
        hits = [
            pc.is_in(_part(sorted_ids, bounds, b), value_set=self.parts[b]) for b in range(BUCKETS)
        ]
        found = pa.concat_arrays(hits) if hits else pa.array([], pa.bool_())
        return found.take(pc.sort_indices(grouped))


# -- mark ------------------------------------------------------------------------------------
class DamagedPointStopsPrune(FormatError):
    """What restore point {} references is unknown ({}): prune deletes nothing and stats cannot count until it is forgotten (`vmkeep forget {}`; `vmkeep check` names its damage) or its manifest is put back from a copy"""  # noqa: E501

    exit_code = 13


def point_blob_ids(data: bytes, point_id: str) -> Iterable[pa.Array]:
    """The non-zero blob ids a manifest references (``binary(32)`` arrays, may repeat).

    Raises ``UnknownPointKind`` for kinds this code cannot enumerate and ``FormatError`` /
    ``DataCorrupt`` for damaged manifests — callers must then not delete anything (the error
    may come after some arrays were produced).
    """
    key = point_key(point_id)
    if blake3(data).hexdigest() != point_id:
        raise DataCorrupt(key, "manifest content does not match its name")
    kind = read_header(data, key).get("kind")
    if kind in IMAGE_KINDS:
        for ids in iter_blob_ids(data, point_id):  # validates schema and tiling
            yield ids.filter(pc.not_equal(ids, _ZERO))
    elif kind == "files":
        try:
            from vmkeep.storage.file_manifest import decode_file_point
        except ImportError:
            raise UnknownPointKind(point_id[:12], kind) from None
        table = decode_file_point(data, point_id).table  # validated
        ids = table.column("chunks").combine_chunks().flatten()
        yield ids.filter(pc.not_equal(ids, _ZERO))
    else:
        raise UnknownPointKind(point_id[:12], kind)


def referenced_blobs(repo: Repository, report: PruneReport, point_ids: list[str]) -> RefSet:
    """Unique ids referenced by the restore points ``point_ids`` (with the pieces of the
    recipes among them)."""
    refs = RefSet()
    recipes = RecipeTable(repo)  # empty (and free) in a version-1 repository
    used_recipes = RefSet()
    for point_id in point_ids:
        try:
            data = repo.backend.get(point_key(point_id))
            for ids in point_blob_ids(data, point_id):
                if len(ids):
                    refs.add(ids)
                    if len(recipes):
                        used_recipes.add(recipes.recipes_among(ids))
        except ObjectNotFound:  # forgotten since the listing: its chunks need no keeping
            continue
        except (DataCorrupt, FormatError) as exc:
            raise DamagedPointStopsPrune(point_id[:8], exc.get_message(), point_id[:8]) from None
        report.points += 1
    used_recipes.fold()
    for part in used_recipes.parts:  # a recipe keeps its pieces (raises rather than under-mark)
        for pieces in recipes.pieces(part):
            if len(pieces):
                refs.add(pieces)
    refs.fold()
    return refs


# -- plan ------------------------------------------------------------------------------------
@dataclass
class _Plan:
    #: old index files' entries whose pack exists (rows grouped by bucket), plus "used"
    index: list[pa.Table]
    old_indexes: list[str]
    delete: set[bytes]
    repack: set[bytes]
    unindexed: list[str]
    rescued: int = 0  # unindexed packs found to hold referenced blobs: indexed again
    #: blob ids listed by index files younger than the grace (kept as they are)
    young_ids: pa.Array = field(default_factory=lambda: pa.array([], ID_TYPE))
    #: packs named by deletion records (never counted as a kept copy)
    recorded: set[bytes] = field(default_factory=set)
    #: every pack's modification time as listed (stored in deletion records)
    mtimes: dict[bytes, float | None] = field(default_factory=dict)


def _plan(
    repo: Repository,
    refs: RefSet,
    grace: timedelta,
    repack_below: float,
    report: PruneReport,
    max_unused: float = 1.0,
) -> _Plan:
    cutoff = (clock.now() - grace).timestamp()
    # index files first, then packs: every pack a listed index file names was stored before it,
    # so it is in the pack listing and its entries survive a rewrite (listed the other way, a
    # backup committing in between lost its entries whenever its index file looked older than
    # the grace — always with grace 0 on a target with whole-second times, such as SFTP)
    index_files = list(repo.backend.list_times("index"))
    packs: dict[bytes, tuple[int, float | None]] = {
        pack_id_from_key(k): (size, mtime)
        for k, size, mtime in repo.backend.list_times("packs") if is_pack_key(k)
    }
    report.packs = len(packs)
    existing = pa.array(list(packs), ID_TYPE)
    files: list[tuple[pa.Table, list[int]]] = []  # rows grouped by bucket, bucket bounds
    old_indexes: list[str] = []
    protected: set[bytes] = set()
    young: list[list[pa.Array]] = [[] for _ in range(BUCKETS)]
    young_unused: dict[bytes, int] = {}  # unreferenced bytes per pack of young index files
    for key, _size, mtime in index_files:
        table = read_index(repo.backend, key).replace_schema_metadata(None)
        if mtime is None or mtime > cutoff:
            protected.update(pc.unique(table.column("pack_id")).to_pylist())
            ids = table.column("blob_id").combine_chunks()
            stored = stored_share(table)
            unused = stored.filter(pc.invert(refs.contains(ids)))
            for pack_id, size in zip(
                table.column("pack_id").filter(pc.invert(refs.contains(ids))).to_pylist(),
                unused.to_pylist(),
                strict=True,
            ):
                young_unused[pack_id] = young_unused.get(pack_id, 0) + size
            grouped, bounds = _group(ids, ids)
            for b in range(BUCKETS):
                young[b].append(_part(grouped, bounds, b))
            continue
        old_indexes.append(key)
        table = table.filter(pc.is_in(table.column("pack_id"), value_set=existing))
        table = _compact(table.combine_chunks())
        files.append(_group(table, table.column("blob_id").combine_chunks()))
    young_listed = set(protected)
    protected |= {p for p, (_, mtime) in packs.items() if mtime is None or mtime > cutoff}
    protected &= packs.keys()
    report.packs_protected = len(protected)

    # per bucket: which index entries are referenced, which referenced ids no index lists
    used: list[list[pa.Array]] = [[] for _ in files]
    found: list[pa.Array] = []
    for b in range(BUCKETS):
        column = pa.chunked_array(  # of Arrays: given ChunkedArrays, pyarrow goes through Python
            [_part(t.column("blob_id").combine_chunks(), bounds, b) for t, bounds in files],
            ID_TYPE,
        ).combine_chunks()
        hit = pc.is_in(column, value_set=refs.parts[b])
        at = 0
        for i, (_t, bounds) in enumerate(files):
            n = bounds[b + 1] - bounds[b]
            used[i].append(hit.slice(at, n))
            at += n
        report.indexed_blobs += len(pc.unique(column))
        known = pa.chunked_array([column.filter(hit), *young[b]], ID_TYPE).combine_chunks()
        found.append(pc.is_in(refs.parts[b], value_set=known))
        del column, hit, known
    index = [
        t.append_column("used", pa.concat_arrays(u) if u else pa.array([], pa.bool_()))
        for (t, _bounds), u in zip(files, used, strict=True)
    ]
    index = _whole_units(index)
    young_ids = pa.chunked_array([a for part in young for a in part], ID_TYPE).combine_chunks()
    del files, used, young
    report.missing_blobs = sum(len(f) - f.true_count for f in found)

    # referenced and total stored bytes per pack
    per_pack: dict[bytes, list[int]] = {}
    for table in index:
        stored = stored_share(table)
        sums = (
            pa.table(
                {
                    "pack_id": table.column("pack_id"),
                    "total": stored,
                    "used": pc.if_else(table.column("used"), stored, pa.scalar(0, pa.uint64())),
                }
            )
            .group_by("pack_id", use_threads=False)
            .aggregate([("total", "sum"), ("used", "sum")])
        )
        for pack_id, total, used_bytes in zip(
            sums.column("pack_id").to_pylist(),
            sums.column("total_sum").to_pylist(),
            sums.column("used_sum").to_pylist(),
            strict=True,
        ):
            acc = per_pack.setdefault(pack_id, [0, 0])
            acc[0] += total
            acc[1] += used_bytes
    delete: set[bytes] = set()
    repack: set[bytes] = set()
    candidates: list[tuple[int, bytes]] = []  # (unused bytes, pack) of packs kept so far
    kept_total = kept_unused = 0
    for pack_id, (total, used_bytes) in per_pack.items():
        if pack_id in protected:
            if used_bytes < total:
                report.packs_held_by_grace += 1
                report.bytes_held_by_grace += total - used_bytes
            continue
        if used_bytes == 0:
            delete.add(pack_id)
        elif total and used_bytes / total < repack_below:
            repack.add(pack_id)
        else:
            kept_total += total
            kept_unused += total - used_bytes
            if used_bytes < total:
                candidates.append((total - used_bytes, pack_id))
    # restic's --max-unused: repack the packs with most garbage until the rest is tidy enough
    for unused, pack_id in sorted(candidates, reverse=True):
        if kept_unused <= max_unused * kept_total:
            break
        repack.add(pack_id)
        kept_unused -= unused
        kept_total -= unused
    for p in packs.keys() - per_pack.keys():
        if p in protected:  # listed by a young index file only, or by none (being written)
            unused_bytes = young_unused.get(p, 0) if p in young_listed else packs[p][0]
            if unused_bytes:
                report.packs_held_by_grace += 1
                report.bytes_held_by_grace += unused_bytes
    unindexed = [pack_key(p) for p in packs if p not in per_pack and p not in protected]
    # an unindexed pack may hold the only copy of a referenced blob (e.g. a lost index file):
    # then it is kept and indexed rather than deleted.
    rescued = 0
    if report.missing_blobs and unindexed:
        before = len(unindexed)
        unindexed = _rescue_unindexed(repo, index, refs, found, unindexed, report)
        rescued = before - len(unindexed)
    mtimes = {p: mtime for p, (_size, mtime) in packs.items()}
    return _Plan(index, old_indexes, delete, repack, unindexed, rescued, young_ids, mtimes=mtimes)


def _rescue_unindexed(
    repo: Repository,
    index: list[pa.Table],
    refs: RefSet,
    found: list[pa.Array],
    unindexed: list[str],
    report: PruneReport,
) -> list[str]:
    """Index (append to ``index``) the unindexed packs holding referenced blobs; returns the
    others."""
    from vmkeep.storage.pack import parse_pack

    still = []
    for key in unindexed:
        try:
            entries = parse_pack(repo.backend.get(key), key, repo.cipher)
        except StorageError:
            still.append(key)
            continue
        extra = _compact(_entries_table([(pack_id_from_key(key), e) for e in entries]))
        used = refs.contains(extra.column("blob_id").combine_chunks())
        if used.true_count:
            index.append(extra.append_column("used", used))
            ids = extra.column("blob_id").combine_chunks().filter(used)
            grouped, bounds = _group(ids, ids)
            for b in range(BUCKETS):
                hit = pc.is_in(refs.parts[b], value_set=_part(grouped, bounds, b))
                found[b] = pc.or_(found[b], hit)
        else:
            still.append(key)
    report.missing_blobs = sum(len(f) - f.true_count for f in found)
    return still


def _entries_table(rows: list[tuple[bytes, PackEntry]]) -> pa.Table:
    return entries_table(rows)


def stored_share(table: pa.Table) -> pa.Array:
    """Stored bytes per row (uint64): a blob's payload length; a piece inside a unit (codec 3)
    the unit's stored bytes in proportion to its length, so the pieces of a unit add up to
    the unit (rounded down) instead of counting its payload once per piece."""
    stored = table.column("stored_length").combine_chunks().cast(pa.uint64())
    if "unit_length" not in table.column_names:
        return stored
    unit = pc.equal(table.column("codec").combine_chunks(), CODEC_UNIT)
    if not pc.any(unit).as_py():
        return stored
    raw = table.column("raw_length").combine_chunks().cast(pa.uint64())
    one = pa.scalar(1, pa.uint64())
    ulen = pc.max_element_wise(table.column("unit_length").combine_chunks().cast(pa.uint64()), one)
    share = pc.divide(pc.multiply(stored, raw), ulen)
    return pc.if_else(unit, share, stored).cast(pa.uint64())


def _unit_keys(table: pa.Table) -> pa.Array:
    """Per row: pack id + ``:`` + payload offset (binary), naming the unit of a codec-3 row."""
    pack = table.column("pack_id").combine_chunks()
    if pa.types.is_dictionary(pack.type):
        pack = pack.cast(ID_TYPE)
    offset = table.column("offset").combine_chunks().cast(pa.string()).cast(pa.binary())
    return pc.binary_join_element_wise(pack.cast(pa.binary()), offset, b":")


def _whole_units(index: list[pa.Table]) -> list[pa.Table]:
    """``index`` with every piece of a unit marked used when any piece of it is (a unit is
    kept, and repacked, whole).  Units may be listed across several index files."""
    used_units: list[pa.Array] = []
    for t in index:
        mask = pc.and_(pc.equal(t.column("codec"), CODEC_UNIT), t.column("used"))
        if pc.any(mask).as_py():
            used_units.append(_unit_keys(t.filter(mask)))
    if not used_units:
        return index
    keys = pc.unique(pa.chunked_array(used_units, pa.binary()).combine_chunks())
    out = []
    for t in index:
        unit = pc.equal(t.column("codec"), CODEC_UNIT)
        if not pc.any(unit).as_py():
            out.append(t)
            continue
        whole = pc.and_(unit, pc.is_in(_unit_keys(t), value_set=keys))
        at = t.schema.get_field_index("used")
        out.append(t.set_column(at, "used", pc.or_(t.column("used"), whole)))
    return out


def _compact(table: pa.Table) -> pa.Table:
    """``table`` with its ``pack_id`` column dictionary-encoded (4 bytes a row instead of 32:
    a pack holds thousands of blobs)."""
    i = table.schema.get_field_index("pack_id")
    return table.set_column(i, "pack_id", table.column(i).combine_chunks().dictionary_encode())


def _recorded_levels(data: bytes, key: str, repo: Repository) -> dict[bytes, int | None]:
    """The zstd levels a pack's trailer records (repacked blobs keep theirs); none when the
    trailer is unreadable (its blobs are then checked one by one as before)."""
    try:
        return {e.blob_id: e.level for e in parse_pack(data, key, repo.cipher)}
    except StorageError:
        return {}


def _expand(table: pa.Table) -> pa.Table:
    """The inverse of :func:`_compact`: ``pack_id`` as plain ids again."""
    i = table.schema.get_field_index("pack_id")
    return table.set_column(i, "pack_id", table.column(i).cast(ID_TYPE))


def _in_packs(table: pa.Table, packs: Iterable[bytes]) -> pa.Array:
    return pc.is_in(table.column("pack_id"), value_set=pa.array(list(packs), ID_TYPE))


# -- sweep -----------------------------------------------------------------------------------
def _repack(
    repo: Repository, plan: _Plan, report: PruneReport, step: Step
) -> tuple[list[tuple[bytes, PackEntry]], set[bytes]]:
    """Copy the referenced blobs of ``plan.repack`` packs into new packs; returns their entries
    and the packs to keep after all.  Blobs also stored in a kept pack are not copied.  A pack
    holding a referenced blob that fails verification is kept as it is (``check`` reports it;
    prune never deletes the only, if damaged, copy)."""
    written: list[tuple[bytes, PackEntry]] = []
    kept_back: set[bytes] = set()
    if not plan.repack:
        return written, kept_back
    # the referenced entries of the packs to repack, and which of their ids a kept pack stores
    wanted = pa.concat_tables(
        [t.filter(pc.and_(_in_packs(t, plan.repack), t.column("used"))) for t in plan.index]
    ).drop_columns(["used"])
    wanted = _expand(wanted).sort_by(
        [("pack_id", "ascending"), ("offset", "ascending"), ("unit_offset", "ascending")]
    )
    wanted_ids = pc.unique(wanted.column("blob_id"))
    gone = plan.repack | plan.delete | plan.recorded
    have: set[bytes] = set()
    for t in plan.index:
        mask = pc.and_(
            pc.invert(_in_packs(t, gone)), pc.is_in(t.column("blob_id"), value_set=wanted_ids)
        )
        have.update(id_list(t.column("blob_id").filter(mask)))
    builder = PackBuilder(repo.pack_version)

    def seal() -> None:
        nonlocal builder
        if not builder.entries:
            return
        pack_id, data, entries = builder.finish(repo.cipher)
        repo.backend.put(pack_key(pack_id), data)
        written.extend((pack_id, e) for e in entries)
        report.packs_written += 1
        report.bytes_written += len(data)
        builder = PackBuilder(repo.pack_version)
        step("repack-pack-written")

    pack_ids = id_list(wanted.column("pack_id"))
    columns = [
        id_list(wanted.column("blob_id")),
        *(
            wanted.column(n).to_pylist()
            for n in ("offset", "stored_length", "raw_length", "codec", "unit_offset",
                      "unit_length")
        ),
    ]
    rows = list(zip(*columns, strict=True))
    start = 0
    while start < len(rows):
        pack_id = pack_ids[start]
        end = start
        while end < len(rows) and pack_ids[end] == pack_id:
            end += 1
        key = pack_key(pack_id)
        data = repo.backend.get(key)
        levels = _recorded_levels(data, key, repo)
        units: dict[int, list[tuple[bytes, int, int, int]]] = {}  # offset -> its pieces
        for blob_id, offset, _stored, raw, codec, unit_offset, unit_length in rows[start:end]:
            if codec == CODEC_UNIT:
                units.setdefault(offset, []).append((blob_id, unit_offset, raw, unit_length))
        for blob_id, offset, stored, raw, codec, _uo, unit_length in rows[start:end]:
            if codec == CODEC_UNIT:
                pieces = units.pop(offset, None)
                if pieces is None or all(p[0] in have for p in pieces):
                    continue  # copied with its first piece, or every piece kept elsewhere
                payload = data[offset : offset + stored]
                if not _unit_verifies(repo, pack_id, offset, stored, payload, pieces, key):
                    kept_back.add(pack_id)
                    continue
                builder.add_unit([p[:3] for p in pieces], payload, unit_length,
                                 levels.get(blob_id))
                have.update(p[0] for p in pieces)
                report.bytes_repacked += len(payload)
                if len(builder) >= repo.config.pack_size:
                    seal()
                continue
            if blob_id in have:
                continue
            payload = data[offset : offset + stored]
            try:
                repo.decode_payload(blob_id, codec, payload, raw, key)
            except StorageError:
                kept_back.add(pack_id)
                continue
            builder.add(blob_id, codec, payload, raw, levels.get(blob_id))
            have.add(blob_id)
            report.bytes_repacked += len(payload)
            if len(builder) >= repo.config.pack_size:
                seal()
        start = end
    seal()
    return written, kept_back


def _unit_verifies(
    repo: Repository,
    pack_id: bytes,
    offset: int,
    stored: int,
    payload: bytes,
    pieces: list[tuple[bytes, int, int, int]],
    key: str,
) -> bool:
    """Whether a unit's payload decodes and every piece ``(id, unit offset, length, unit
    length)`` in it matches its id."""
    from vmkeep.storage.index import BlobLocation

    try:
        unit = repo.decode_unit(payload, pieces[0][3], key, [p[0] for p in pieces])
        for blob_id, unit_offset, raw, unit_length in pieces:
            loc = BlobLocation(pack_id, offset, stored, raw, CODEC_UNIT, unit_offset, unit_length)
            repo.unit_piece(blob_id, unit, loc, key)
    except StorageError:
        return False
    return True


def _write_index(
    repo: Repository, parts: Iterable[pa.Table], report: PruneReport, step: Step
) -> tuple[set[str], set[bytes]]:
    """Write ``parts`` (tables in the index schema) as index files of at most
    :data:`INDEX_ROWS` entries, of the repository's index version; returns their keys and the
    packs they list."""
    version = repo.index_version
    meta = {"format": INDEX_FORMAT, "version": version, "writer": "prune"}
    schema = index_schema(version).with_metadata({b"vmkeep": json.dumps(meta).encode()})
    written: set[str] = set()
    listed: set[bytes] = set()

    def flush(table: pa.Table) -> None:
        sink = pa.BufferOutputStream()  # Arrow memory, no Python copy
        table = for_version(table, version, "prune's index")
        pq.write_table(table.cast(schema), sink, compression="zstd")
        data = sink.getvalue()
        key = f"index/{blake3(data).hexdigest()}.parquet"
        repo.backend.put(key, memoryview(data))
        written.add(key)
        listed.update(pc.unique(table.column("pack_id")).to_pylist())
        report.indexes_written += 1
        step("index-written")

    pending: list[pa.Table] = []
    rows = 0
    for part in parts:
        if not len(part):
            continue
        pending.append(part)
        rows += len(part)
        while rows >= INDEX_ROWS:
            table = pa.concat_tables(pending)
            flush(table.slice(0, INDEX_ROWS))
            rest = table.slice(INDEX_ROWS)
            pending, rows = ([rest.combine_chunks()] if len(rest) else []), len(rest)
    if rows:
        flush(pa.concat_tables(pending))
    return written, listed


def _orphan_catalogs(repo: Repository, points: set[str]) -> list[str]:
    """Derived objects of restore points that have no manifest (``points``, listed under the
    lock, plus a fresh listing): catalogs, verification records with their screenshots, and
    protection records (a protected point is never forgotten; its manifest was lost)."""
    from vmkeep.storage import verifications

    names = [(key, catalog_point(key)) for key, _ in repo.backend.list(CATALOG_PREFIX)]
    records = list(repo.backend.list(verifications.PREFIX))
    guards = [key for key, _ in repo.backend.list(PROTECTED_PREFIX)]
    if not names and not records and not guards:
        return []
    points = points | set(repo.point_ids())
    return sorted(
        key
        for key, point_id in names
        if point_id is not None and point_id not in points
    ) + verifications.orphans(repo, points) + sorted(
        key for key in guards if key.rsplit("/", 1)[-1] not in points)


def _expired_tombstones(repo: Repository, points: set[str]) -> list[str]:
    """Tombstones older than :data:`~vmkeep.storage.forget.TOMBSTONE_TTL` whose point has no
    manifest (one beside a live manifest records an unfinished forget: kept)."""
    from vmkeep.storage.forget import FORGOTTEN_PREFIX, TOMBSTONE_TTL

    cutoff = (clock.now() - TOMBSTONE_TTL).timestamp()
    old = [
        key
        for key, _size, mtime in repo.backend.list_times(FORGOTTEN_PREFIX)
        if mtime is not None and mtime <= cutoff
    ]
    if not old:
        return []
    live = points | set(repo._list_point_ids())
    return sorted(k for k in old if k.rsplit("/", 1)[-1] not in live)


def _temporaries(repo: Repository, grace: timedelta) -> list[tuple[str, int]]:
    """Temporary objects older than the grace, than :data:`TEMP_MIN_AGE` and than every live
    lease: a writer holding a lease may still be writing one, whatever this prune's clock says
    (a clock far ahead made a running backup's pack vanish before its rename)."""
    cutoff = (clock.now() - max(grace, TEMP_MIN_AGE)).timestamp()
    _, oldest = _leases(repo)
    if oldest is not None:
        cutoff = min(cutoff, oldest.timestamp())
    return sorted(
        (key, size)
        for key, size, mtime in repo.backend.list_temporary("")
        if mtime is not None and mtime <= cutoff
    )


def prune(
    repo: Repository,
    *,
    grace: timedelta = DEFAULT_GRACE,
    repack_below: float = DEFAULT_REPACK_BELOW,
    max_unused: float = DEFAULT_MAX_UNUSED,
    dry_run: bool = False,
    lock: bool = True,
    step: Step | None = None,
) -> PruneReport:
    """Prune ``repo`` (see the module docstring).  Takes the ``prune`` lock unless ``lock`` is
    false (the caller holds it) or ``dry_run``.  ``step(name)`` is called after each step (tests
    kill the process or interleave backups there)."""
    started = time.monotonic()
    report = PruneReport(dry_run=dry_run)
    on = step or (lambda name: None)
    held = repo.lock(PRUNE, command="prune") if lock and not dry_run else None
    try:
        on("locked")
        records = gc.load_records(repo.backend)
        if not dry_run:
            gc.confirm_provisional(repo.backend, records)
        recorded = gc.recorded_packs(records)
        points = repo.point_ids()
        refs = referenced_blobs(repo, report, points)
        report.referenced_blobs = len(refs)
        on("marked")
        plan = _plan(repo, refs, grace, repack_below, report, max_unused)
        plan.recorded = recorded
        plan.delete -= recorded
        plan.repack -= recorded
        strays = {pack_id_from_key(k) for k in plan.unindexed} - recorded  # never indexed
        report.to_delete = [pack_key(p) for p in sorted(plan.delete | strays)]
        report.to_repack = [pack_key(p) for p in sorted(plan.repack)]
        report.packs_repacked = len(plan.repack)
        report.packs_deleted = len(plan.delete) + len(plan.repack)  # dry run: would be
        report.unindexed_packs_deleted = len(strays)
        report.packs_reindexed = plan.rescued
        catalogs = _orphan_catalogs(repo, set(points))
        temporaries = _temporaries(repo, grace)
        tombstones = _expired_tombstones(repo, set(points))
        report.tombstones_deleted = len(tombstones)
        report.catalogs_deleted = len(catalogs)
        report.temp_files_deleted = len(temporaries)
        report.temp_bytes_deleted = sum(size for _, size in temporaries)
        on("planned")
        if dry_run:
            _holds(repo, grace, report)
            doomed_keys = set(report.to_delete) | set(report.to_repack)
            report.bytes_freed = sum(s for k, s in list_packs(repo.backend) if k in doomed_keys)
            return report
        # stage 1: condemn (repacked chunks are indexed in new packs first)
        condemned = plan.delete | plan.repack
        new_entries: list[tuple[bytes, PackEntry]] = []
        if plan.repack:
            new_entries, kept_back = _repack(repo, plan, report, on)
            condemned -= kept_back
            report.packs_repacked -= len(kept_back)
            if new_entries:
                _write_index(repo, [_entries_table(new_entries)], report, on)
        on("repacked")
        if held is not None:
            held.ensure()
        if condemned:
            gc.write_record(repo.backend, condemned, gc.CONDEMNED, plan.mtimes)
            on("condemned")
        if strays:
            gc.write_record(repo.backend, strays, gc.UNLISTED, plan.mtimes)
            on("recorded")
        # stage 2: unlist what no lease older than its condemnation can still reference
        unlist = _unlist(repo, plan, set(points), refs, new_entries, grace, report, held, on)
        del refs
        # stage 3: delete what no lease older than its unlisting can still read
        report.packs_deleted = report.unindexed_packs_deleted = 0  # now: what was deleted
        deleted = _collect(repo, grace, report, held, on)
        report.unindexed_packs_deleted = len(deleted & strays)
        report.packs_deleted = len(deleted) - report.unindexed_packs_deleted
        report.packs_unlisted = len(unlist)
        report.bytes_freed = report.bytes_deleted - report.bytes_written
        for key in catalogs:
            repo.backend.delete(key)
            on("catalog-deleted")
        for key, _size in temporaries:
            repo.backend.delete(key)
            on("temporary-deleted")
        for key in tombstones:
            repo.backend.delete(key)
            on("tombstone-deleted")
        on("done")
        return report
    finally:
        report.duration_s = time.monotonic() - started
        if held is not None:
            held.release()


def _leases(repo: Repository) -> tuple[list[Any], Any]:
    """Live leases other than this repository object's own, and the oldest creation time."""
    own = frozenset(lk.info.id for lk in repo.held_locks())
    leases = live_leases(repo.backend, exclude=own)
    return leases, min((lease.created for lease in leases), default=None)


def _settled(record: gc.PendingRecord, oldest: Any) -> bool:
    return oldest is None or oldest > record.time


def _unlist(
    repo: Repository,
    plan: _Plan,
    points: set[str],
    refs: RefSet,
    new_entries: list[tuple[bytes, PackEntry]],
    grace: timedelta,
    report: PruneReport,
    held: Any,
    on: Step,
) -> set[bytes]:
    """Stage 2 (see :mod:`vmkeep.storage.gc`): returns the packs unlisted now."""
    records = gc.load_records(repo.backend)
    leases, oldest = _leases(repo)  # before the manifests are listed again
    settled = {
        p for r in records if r.state == gc.CONDEMNED and _settled(r, oldest) for p in r.packs
    }
    waiting = gc.recorded_packs([r for r in records if r.state == gc.CONDEMNED]) - settled
    _note_waiting(repo, waiting, leases, [r for r in records if r.state == gc.CONDEMNED], report)
    current = {
        pack_id_from_key(k): mtime
        for k, _size, mtime in repo.backend.list_times("packs") if is_pack_key(k)
    }
    # a settled pack stored again since its condemnation (same content, same id) is a running
    # or finished backup's pack now: revived whatever the manifests say
    again = {
        p
        for r in records
        if r.state == gc.CONDEMNED and _settled(r, oldest)
        for p in gc.rewritten(r, current)
    }
    settled_ids = pa.array(list(settled), ID_TYPE)
    entries = [t.filter(pc.is_in(t.column("pack_id"), value_set=settled_ids)) for t in plan.index]
    entries = [t for t in entries if len(t)]
    revive: set[bytes] = set()
    if settled and entries:
        new_points = [p for p in repo.point_ids() if p not in points]
        fresh = referenced_blobs(repo, PruneReport(), new_points) if new_points else None
        table = _expand(pa.concat_tables([t.drop_columns(["used"]) for t in entries]))
        ids = table.column("blob_id").combine_chunks()
        wanted = refs.contains(ids)
        if fresh is not None:
            wanted = pc.or_(wanted, fresh.contains(ids))
        if wanted.true_count:
            others = gc.recorded_packs(records)
            avail = [
                t.column("blob_id")
                .combine_chunks()
                .filter(
                    pc.invert(
                        pc.is_in(t.column("pack_id"), value_set=pa.array(list(others), ID_TYPE))
                    )
                )
                for t in plan.index
            ]
            avail.append(plan.young_ids)
            avail.append(pa.array([e.blob_id for _, e in new_entries], ID_TYPE))
            available = pa.chunked_array(avail, ID_TYPE).combine_chunks()
            lacking = pc.and_(wanted, pc.invert(pc.is_in(ids, value_set=available)))
            revive = set(table.column("pack_id").filter(lacking).to_pylist())
    revive |= again
    unlist = settled - revive
    listed_now = {
        p for t in plan.index for p in pc.unique(_expand(t).column("pack_id")).to_pylist()
    }
    unlist &= listed_now  # a condemned pack no index lists any more was unlisted already
    if unlist or plan.rescued:
        if held is not None:
            held.ensure()
        _rewrite_index(repo, plan, unlist, report, on)
    if unlist:
        gc.write_record(repo.backend, unlist, gc.UNLISTED, current)
        on("unlisted")
    report.packs_revived = len(revive)
    already = settled - revive - unlist  # condemned but unlisted earlier (a crash): re-record
    if already:
        gc.write_record(repo.backend, already, gc.UNLISTED, current)
    for record in records:
        if record.state == gc.CONDEMNED:
            gc.update_record(repo.backend, record, record.packs - settled)
    return unlist


def _note_waiting(
    repo: Repository,
    waiting: set[bytes],
    leases: list[Any],
    records: list[gc.PendingRecord],
    report: PruneReport,
) -> None:
    if not waiting:
        return
    sizes = dict(list_packs(repo.backend))
    report.packs_held_by_leases += sum(1 for p in waiting if pack_key(p) in sizes)
    report.bytes_held_by_leases += sum(sizes.get(pack_key(p), 0) for p in waiting)
    newest = max(r.time for r in records)
    report.held_by = sorted(
        set(report.held_by) | {ls.describe() for ls in leases if ls.created <= newest}
    )


def _rewrite_index(
    repo: Repository, plan: _Plan, unlist: set[bytes], report: PruneReport, on: Step
) -> None:
    """Write the old (older than the grace) index files' entries again, without the packs in
    ``unlist`` (plus rescued packs), then delete the old files."""
    gone = pa.array(list(unlist), ID_TYPE)

    def kept() -> Iterable[pa.Table]:
        while plan.index:  # release each old table once written
            table = plan.index.pop(0)
            keep = pc.invert(pc.is_in(table.column("pack_id"), value_set=gone))
            yield _expand(table.filter(keep).drop_columns(["used"]))

    new_indexes, _listed = _write_index(repo, kept(), report, on)
    on("indexed")
    # names are content hashes: an unchanged index is rewritten under its own name
    for key in [k for k in plan.old_indexes if k not in new_indexes]:
        repo.backend.delete(key)
        report.indexes_deleted += 1
        on("index-deleted")
    repo._index = None  # the next use reloads the rewritten index


def _holds(repo: Repository, grace: timedelta, report: PruneReport) -> None:
    """Dry run: what the deletion records hold back, and why."""
    records = gc.load_records(repo.backend)
    if not records:
        return
    leases, oldest = _leases(repo)
    waiting = [r for r in records if not _settled(r, oldest)]
    _note_waiting(repo, gc.recorded_packs(waiting), leases, waiting, report)


def _collect(
    repo: Repository,
    grace: timedelta,
    report: PruneReport,
    held: Any,
    on: Step,
) -> set[bytes]:
    """Stage 3: delete the unlisted packs that no live lease can have seen in an index."""
    records = [r for r in gc.load_records(repo.backend) if r.state == gc.UNLISTED]
    if not records:
        return set()
    cutoff = (clock.now() - grace).timestamp()
    leases, oldest = _leases(repo)
    packs = {
        pack_id_from_key(k): (size, mtime)
        for k, size, mtime in repo.backend.list_times("packs") if is_pack_key(k)
    }
    _ids, indexed_packs = _current_index(repo)
    ready: dict[bytes, gc.PendingRecord] = {}
    keep: dict[str, set[bytes]] = {}
    waiting: list[gc.PendingRecord] = []
    mtimes = {p: mtime for p, (_size, mtime) in packs.items()}
    for record in records:
        # stored again since the unlisting (a backup wrote the same content): not ours to delete;
        # left out of the record (a later prune indexes it again or records it anew)
        again = gc.rewritten(record, mtimes)
        still = {p for p in record.packs if p in packs and p not in indexed_packs} - again
        keep[record.key] = set(still)
        for p in still:
            size, mtime = packs[p]
            if mtime is None or mtime > cutoff:
                report.packs_held_by_grace += 1
                report.bytes_held_by_grace += size
            elif not _settled(record, oldest):
                waiting.append(record)
            else:
                ready[p] = record
    _note_waiting(
        repo, {p for r in waiting for p in keep[r.key]}, leases, waiting or records, report
    )
    if ready and held is not None:
        held.ensure()
    for p, record in sorted(ready.items()):
        repo.backend.delete(pack_key(p))
        report.bytes_deleted += packs[p][0]
        keep[record.key].discard(p)
        on("pack-deleted")
    for record in records:
        gc.update_record(repo.backend, record, keep[record.key])
    return set(ready)


def _current_index(repo: Repository) -> tuple[pa.Array, set[bytes]]:
    """The blob ids and the pack ids that the index files list now."""
    ids: list[pa.Array] = []
    listed: set[bytes] = set()
    for key, _size in repo.backend.list("index"):
        try:
            table = read_index(repo.backend, key)
        except StorageError:
            continue  # deleted meanwhile (a writer never deletes; only we would)
        listed.update(pc.unique(table.column("pack_id")).to_pylist())
        ids.append(table.column("blob_id").combine_chunks())
    joined = pa.chunked_array(ids, ID_TYPE).combine_chunks() if ids else pa.array([], ID_TYPE)
    return joined, listed
