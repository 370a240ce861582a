"""Repository verification: structure always, every byte with ``read_data``.

A :class:`Problem` names what is damaged and, for chunk damage, every restore point, disk and
offset that references it — the information an administrator needs to decide what to re-run.
The check never modifies the repository.

Structure check: config, every index and manifest parses and validates; every index entry —
each copy, in every index file — agrees with its pack's trailer (same pack, offset, stored and raw
length, codec), the trailer being read from the pack's tail and bounds-checked against the pack's
size (so an entry past the pack's end, into another pack's header, with a length of 2^32-1 or an
unknown codec is reported as ``bad-index``); every chunk a manifest references is indexed in an
existing pack.
Beside points: catalogs, verification and protection records that cannot be read are
reported as warnings (derived or guarding objects, no backup data).
Data check (``read_data``): every pack is read whole, its name must equal its BLAKE3, its trailer
must parse (and is the one the index entries are compared with), and every blob must decode and
match its keyed id.  A compression unit (repository version 4) is decoded once and every piece
inside it must match its id; a unit that does not decode damages every piece it holds (each is
reported as ``corrupt-chunk``, with the restore points using it).

Memory: manifests and indexes are handled as Arrow columns (no Python object per chunk); where
a damaged chunk is used is found by a second pass over the manifests, only when there is damage.
``subset=(n, m)`` reads only packs whose id falls in share ``n`` of ``m`` (rotate ``n``);
``subset=p`` (a float, 0 < p <= 1) reads a share ``p`` of the packs drawn at random, at least
one (restic's ``--read-data-subset 5%``: each run reads others).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from blake3 import blake3

from vmkeep.storage import verifications
from vmkeep.storage.catalogs import CATALOG_PREFIX, catalog_point, decode_table
from vmkeep.storage.codec import CODEC_RECIPE, CODEC_UNIT, ID_SIZE, ZERO_ID, decode_recipe
from vmkeep.storage.errors import DataCorrupt, FormatError, ObjectNotFound, StorageError
from vmkeep.storage.forget import FORGOTTEN_PREFIX
from vmkeep.storage.heal import (
    Damage,
    DamageRecord,
    damaged_locations,
    load_damage,
    record_damage,
    update_damage,
    usable_rows,
)
from vmkeep.storage.index import SCHEMA as INDEX_SCHEMA
from vmkeep.storage.index import BlobLocation, MasterIndex, id_list, read_index
from vmkeep.storage.manifest import BATCH_ROWS, iter_blob_ids, point_key, read_header
from vmkeep.storage.pack import (
    PackEntry,
    list_packs,
    pack_digest,
    pack_id_from_key,
    pack_key,
    parse_pack,
    read_trailer,
)
from vmkeep.storage.pack_levels import LevelSummary
from vmkeep.storage.protection import damaged_text, protections
from vmkeep.storage.recipes import RecipeTable
from vmkeep.storage.repository import Repository

#: Concurrent tail reads of packs in the structure check (remote targets: latency-bound).
TRAILER_READERS = 8


@dataclass
class Problem:
    kind: str  # missing-pack, corrupt-pack, missing-chunk, corrupt-chunk, bad-index, bad-manifest
    detail: str
    object: str = ""
    affected: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "object": self.object,
            "detail": self.detail,
            "affected": self.affected,
        }


@dataclass
class CheckReport:
    points: int = 0
    packs: int = 0
    blobs: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: Not damage, but worth an administrator's attention (e.g. a forget that did not finish).
    warnings: list[str] = field(default_factory=list)
    #: Chunks an earlier check found damaged that a backup has stored again, with their points.
    healed: list[dict[str, Any]] = field(default_factory=list)
    #: The zstd levels the indexed packs' trailers record (:mod:`vmkeep.storage.pack_levels`).
    levels: LevelSummary = field(default_factory=LevelSummary)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "points": self.points,
            "packs": self.packs,
            "blobs": self.blobs,
            "bytes_read": self.bytes_read,
            "problems": [p.to_json() for p in self.problems],
            "warnings": self.warnings,
            "healed": self.healed,
            "zstd_levels": self.levels.to_json(),
        }


def parse_subset(text: str) -> tuple[int, int] | float:
    """``"N/M"`` → ``(N, M)`` with ``1 <= N <= M``; ``"*/M"`` rotates N by the ISO week, so a
    weekly run reads every pack once in M weeks; ``"P%"`` (0 < P <= 100) → the share P/100 of
    the packs, drawn at random on each run (restic's ``--read-data-subset 5%``).  A
    :class:`ValueError` saying what is wanted otherwise."""
    from vmkeep import clock

    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            share = -1.0
        if not 0 < share <= 1:  # nan and inf fail this too
            raise ValueError(f"subset {text!r}: want N/M, */M or P% with 0 < P <= 100")
        return share
    n, sep, m = text.partition("/")
    if not sep or not m.isdigit() or not (n == "*" or n.isdigit()):
        raise ValueError(f"subset {text!r}: want N/M, */M or P%")
    if n == "*":
        n = str(clock.now().isocalendar().week % max(1, int(m)) + 1)
    pair = (int(n), int(m))
    if not 1 <= pair[0] <= pair[1]:
        raise ValueError(f"subset {text!r}: want N/M with 1 <= N <= M")
    return pair


def _packs_to_read(
    packs: list[bytes], subset: tuple[int, int] | float | None
) -> list[bytes]:
    """The packs whose data a check reads: all, share ``n`` of ``m`` by id, or a random share."""
    if subset is None:
        return packs
    if isinstance(subset, tuple):
        n, m = subset
        return [p for p in packs if int.from_bytes(p[:4], "big") % m == n - 1]
    if not packs:
        return []
    import random

    chosen = set(random.sample(packs, max(1, round(len(packs) * subset))))
    return [p for p in packs if p in chosen]


def check_repository(
    repo: Repository,
    read_data: bool = False,
    subset: tuple[int, int] | float | None = None,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    report = CheckReport()
    repo.ensure_lease()  # a reader lease: prune keeps what this check may still read
    damage = load_damage(repo.backend)
    index, index_keys = _load_index_rows(repo, report)
    strays: list[str] = []
    packs = {pack_id_from_key(k): size for k, size in list_packs(repo.backend, strays)}
    report.warnings += [f"{key} is not a pack (no pack has such a name): left alone"
                        for key in strays]
    report.packs = len(packs)
    report.blobs = len(pc.unique(index.column("blob_id"))) if index.num_rows else 0

    master = _master_index(index, packs, damaged_locations(damage))

    # chunk id -> (kind, detail) for every chunk that cannot be restored from its index entry
    bad_blobs: dict[bytes, tuple[str, str]] = {}
    trailers: dict[bytes, list[PackEntry]] = {}
    if read_data:
        for pack_id in _packs_to_read(sorted(packs), subset):
            trailers[pack_id] = _check_pack(
                repo, pack_id, index, master, report, bad_blobs, progress
            )
    verified = set(trailers)  # packs read in full
    _check_index_entries(repo, index, index_keys, packs, trailers, report, bad_blobs)

    point_ids = repo.point_ids()
    _unfinished_forgets(repo, point_ids, report)
    _side_records(repo, set(point_ids), report)
    names: dict[str, str] = {}
    referenced: list[pa.Array] = []
    piece_users: dict[bytes, list[bytes]] = {}  # piece id -> recipes (frames) listing it
    recipes = RecipeTable(repo, skip_unreadable=True)  # empty in a version-1 repository
    used_recipes: list[pa.Array] = []
    for point_id in point_ids:
        key = point_key(point_id)
        try:
            data = repo.backend.get(key)
            if blake3(data).hexdigest() != point_id:
                raise StorageError(f"{key}: content does not match its name")
            name, ids = _point_chunks(data, point_id, key)
        except StorageError as exc:
            report.problems.append(Problem("bad-manifest", exc.get_message(), key))
            continue
        report.points += 1
        names[point_id] = name
        referenced.append(ids)
        if len(recipes):
            used_recipes.append(recipes.recipes_among(ids))
    if used_recipes:  # a frame stored as a recipe references its pieces (read in runs)
        unique = pc.unique(pa.chunked_array(used_recipes, pa.binary(ID_SIZE)).combine_chunks())
        found: list[bytes] = []

        def unreadable(recipe: bytes, exc: StorageError) -> None:
            # each recipe is read here to list its pieces; in version 5 that checks it against
            # its id too, so a forged one is reported without --read-data (a missing pack is
            # reported by the reference check below)
            if isinstance(exc, DataCorrupt):
                bad_blobs.setdefault(recipe, ("corrupt-chunk", exc.get_message()))

        for recipe, pieces in recipes.by_recipe(unique, on_unreadable=unreadable):
            for piece in pieces:
                if piece not in piece_users:
                    found.append(piece)
                piece_users.setdefault(piece, []).append(recipe)
        if found:
            referenced.append(pa.array(found, pa.binary(ID_SIZE)))
    _check_references(referenced, index, packs, bad_blobs)
    for piece, frames in piece_users.items():  # a damaged piece damages the frames using it
        if piece in bad_blobs:
            kind, detail = bad_blobs[piece]
            for frame in frames:
                bad_blobs.setdefault(frame, (kind, detail))

    by_kind: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for blob_id, (kind, detail) in bad_blobs.items():
        by_kind[(kind, detail)].append(blob_id)
    pending_heal = {d.blob for r in damage for d in r.entries if not d.healed}
    wanted = set(bad_blobs) | pending_heal
    frames_of = {p: piece_users[p] for p in wanted if p in piece_users}
    wanted |= {f for frames in frames_of.values() for f in frames}
    users = _users(repo, names, wanted) if wanted else {}
    for piece, frames in frames_of.items():  # a piece is used where the frames listing it are
        users[piece] = list(dict.fromkeys(u for f in frames for u in users.get(f, [])))
    for (kind, detail), blob_ids in sorted(by_kind.items()):
        affected = [
            {"point": p, "name": n, **_where(d), "offset": off, "chunk": b.hex()}
            for b in blob_ids
            for p, n, d, off in users.get(b, [])
        ]
        obj = detail.split()[1] if kind == "missing-pack" else ""
        report.problems.append(Problem(kind, detail, obj, affected))
    _heal_report(repo, master, damage, bad_blobs, users, report, verified)
    return report


def _heal_report(
    repo: Repository,
    index: MasterIndex,
    damage: list[DamageRecord],
    bad_blobs: dict[bytes, tuple[str, str]],
    users: dict[bytes, list[tuple[str, str, int | str, int]]],
    report: CheckReport,
    verified: set[bytes],
) -> None:
    """Report the recorded damage a backup has healed (once: the entry is marked healed and its
    location stays excluded); record new damage so that the next backup that reads the same data
    stores it again (:mod:`vmkeep.storage.heal`).  Damage at a location that verifies again (the
    pack was repaired in place) is dropped."""
    known: set[bytes] = set()
    for record in damage:
        healed, repaired = set(), set()
        for d in record.entries:
            known.add(d.blob)
            loc = index.get(d.blob)
            if d.healed or d.blob in bad_blobs or loc is None:
                continue
            if loc.pack_id == d.pack:
                if d.pack in verified:  # read in full and sound again: repaired in place
                    repaired.add(d.blob)
                continue
            healed.add(d.blob)
            report.healed.append(
                {
                    "chunk": d.blob.hex(),
                    "was": d.kind,
                    "pack": loc.pack_id.hex(),
                    "points": sorted({p for p, _n, _d, _o in users.get(d.blob, [])}),
                }
            )
        update_damage(repo.backend, record, healed, repaired)
    fresh = []
    for blob_id, (kind, _detail) in bad_blobs.items():
        if blob_id in known:
            continue
        loc = index.get(blob_id)
        fresh.append(Damage(blob_id, loc.pack_id if loc is not None else None, kind))
    record_damage(repo.backend, fresh)


def _unfinished_forgets(repo: Repository, point_ids: list[str], report: CheckReport) -> None:
    """A tombstone beside a live manifest: a forget was interrupted between its two steps.  The
    point restores normally but rollback detection no longer vouches for it."""
    live = set(point_ids)
    for key, _size in repo.backend.list(FORGOTTEN_PREFIX):
        point_id = key.rsplit("/", 1)[-1]
        if point_id in live:
            report.warnings.append(
                f"restore point {point_id[:12]} has a forget tombstone but still exists: a "
                f"forget was interrupted; run `vmkeep forget {point_id[:12]}` again to finish it"
            )


def _side_records(repo: Repository, point_ids: set[str], report: CheckReport) -> None:
    """Warnings for the objects kept beside points that cannot be read: catalogs (``find`` and
    ``diff`` build a damaged one again), verification records (the point then shows as not
    verified by them) and protection records (the point stays protected).  None of them holds
    backup data, so none is damage to the repository."""
    for key, _size in repo.backend.list(CATALOG_PREFIX):
        point_id = catalog_point(key)
        if point_id not in point_ids:
            continue  # prune's business (an orphan), or not a catalog's name
        try:
            decode_table(repo.backend.get(key), key)
        except (FormatError, DataCorrupt) as exc:
            report.warnings.append(
                f"{exc.get_message()}: `vmkeep find` builds it again from restore point "
                f"{point_id[:12]} (which it reads meanwhile)"
            )
    report.warnings.extend(verifications.unreadable(repo, point_ids))
    for protection in protections(repo.backend, point_ids, log_damaged=False).values():
        if protection.damaged:
            report.warnings.append(damaged_text(protection))


def _where(disk_or_path: int | str) -> dict[str, Any]:
    if isinstance(disk_or_path, str):
        return {"disk": None, "path": disk_or_path}
    return {"disk": disk_or_path}


# -- index ---------------------------------------------------------------------------------------
def _load_index_rows(repo: Repository, report: CheckReport) -> tuple[pa.Table, list[str]]:
    """Every row of every readable index file (duplicates kept: each copy is checked), with a
    ``file`` column holding the position of its index file in the returned list of keys."""
    tables: list[pa.Table] = []
    keys: list[str] = []
    problems: list[Problem] = []
    for _attempt in range(5):  # an index file deleted meanwhile: prune rewrote it, list again
        tables, keys, problems = [], [], []
        try:
            for key, _ in repo.backend.list("index"):
                try:
                    table = read_index(repo.backend, key)
                    if any(table.column(n).null_count for n in table.column_names):
                        raise FormatError(key, "NULL value in an index table")
                except ObjectNotFound:
                    raise
                except StorageError as exc:
                    problems.append(Problem("bad-index", exc.get_message(), key))
                    continue
                file_no = pa.repeat(pa.scalar(len(keys), pa.int32()), table.num_rows)
                tables.append(table.replace_schema_metadata(None).append_column("file", file_no))
                keys.append(key)
        except ObjectNotFound:
            continue
        break
    report.problems.extend(problems)
    if not tables:
        schema = INDEX_SCHEMA.remove_metadata().append(pa.field("file", pa.int32()))
        return schema.empty_table(), keys
    return pa.concat_tables(tables).combine_chunks(), keys


def _check_index_entries(
    repo: Repository,
    index: pa.Table,
    keys: list[str],
    packs: dict[bytes, int],
    trailers: dict[bytes, list[PackEntry]],
    report: CheckReport,
    bad_blobs: dict[bytes, tuple[str, str]],
) -> None:
    """Compare every index entry with its pack's trailer (pack, offset, lengths, codec), which
    :func:`~vmkeep.storage.pack.parse_trailer` has bounds-checked against the pack's size.
    Packs whose trailer was not read whole by the data check are read by their tail only.
    Entries naming a missing pack are left to the reference check (``missing-pack``)."""
    if not index.num_rows:
        return
    pack_ids = sorted(p for p in id_list(pc.unique(index.column("pack_id"))) if p in packs)
    wanted = [p for p in pack_ids if p not in trailers]
    with ThreadPoolExecutor(TRAILER_READERS, thread_name_prefix="vmkeep-check") as pool:
        read = dict(zip(wanted, pool.map(lambda p: _tail(repo, p, packs[p]), wanted), strict=True))
    rows: list[pa.Table] = []
    for pack_id in pack_ids:
        got = trailers.get(pack_id)
        if got is None:
            outcome = read[pack_id]
            if outcome is None:
                continue  # vanished since the listing
            if isinstance(outcome, StorageError):
                report.problems.append(
                    Problem("corrupt-pack", outcome.get_message(), pack_key(pack_id))
                )
                got = []
            else:
                got = outcome
        report.levels.add_pack(got)
        rows.append(_trailer_table(pack_id, got))
    trailer = pa.concat_tables(rows) if rows else _trailer_table(b"", [])
    present = pa.array(list(packs), pa.binary(ID_SIZE))
    mine = index.filter(pc.is_in(index.column("pack_id"), value_set=present))
    if not mine.num_rows:
        return
    joined = _with_key(mine).join(
        _with_key(trailer), keys="key", join_type="left outer", right_suffix="_t",
        use_threads=False,
    )
    same = pc.and_kleene(
        pc.and_kleene(
            pc.and_kleene(
                pc.equal(joined.column("offset"), joined.column("offset_t")),
                pc.equal(joined.column("stored_length"), joined.column("stored_length_t")),
            ),
            pc.and_kleene(
                pc.equal(joined.column("raw_length"), joined.column("raw_length_t")),
                pc.equal(joined.column("codec"), joined.column("codec_t")),
            ),
        ),
        pc.and_kleene(
            pc.equal(joined.column("unit_offset"), joined.column("unit_offset_t")),
            pc.equal(joined.column("unit_length"), joined.column("unit_length_t")),
        ),
    )
    bad = joined.filter(pc.invert(pc.fill_null(same, False)))
    if not bad.num_rows:
        return
    by_file: dict[int, list[str]] = defaultdict(list)
    for row in bad.select(
        ["file", "blob_id", "pack_id", "offset", "stored_length", "raw_length", "codec",
         "offset_t"]
    ).to_pylist():
        blob_id, pack_id = row["blob_id"], row["pack_id"]
        if row["offset_t"] is None:
            why = f"pack {pack_id.hex()[:16]} holds no such chunk"
        else:
            why = f"disagrees with the trailer of pack {pack_id.hex()[:16]}"
        by_file[row["file"]].append(
            f"chunk {blob_id.hex()[:16]} at offset {row['offset']}, {row['stored_length']} "
            f"stored, {row['raw_length']} raw, codec {row['codec']}: {why}"
        )
        bad_blobs.setdefault(
            blob_id, ("bad-index", "chunks whose index entry does not match their pack")
        )
    for file_no, lines in sorted(by_file.items()):
        shown = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
        where = keys[file_no] if file_no < len(keys) else "index"
        report.problems.append(
            Problem("bad-index", f"{len(lines)} entr(ies) do not match their pack (`vmkeep "
                    f"repair index` rewrites them from the packs): {shown}",
                    where)
        )


def _tail(repo: Repository, pack_id: bytes, size: int) -> list[PackEntry] | StorageError | None:
    """A pack's trailer by ranged reads; the (non-transient) error instead of raising it, or
    ``None`` when the pack vanished."""
    try:
        return read_trailer(repo.backend, pack_id, size, repo.cipher)
    except ObjectNotFound:
        return None
    except StorageError as exc:
        if exc.is_transient:
            raise
        return exc


def _trailer_table(pack_id: bytes, entries: list[PackEntry]) -> pa.Table:
    n = len(entries)
    return pa.table(
        {
            "pack_id": pa.array([pack_id] * n, pa.binary(ID_SIZE)),
            "blob_id": pa.array([e.blob_id for e in entries], pa.binary(ID_SIZE)),
            "offset": pa.array([e.offset for e in entries], pa.uint64()),
            "stored_length": pa.array([e.stored_length for e in entries], pa.uint32()),
            "raw_length": pa.array([e.raw_length for e in entries], pa.uint32()),
            "codec": pa.array([e.codec for e in entries], pa.uint8()),
            "unit_offset": pa.array([e.unit_offset for e in entries], pa.uint32()),
            "unit_length": pa.array([e.unit_length for e in entries], pa.uint32()),
        }
    )


def _with_key(table: pa.Table) -> pa.Table:
    """``table`` with a ``key`` column (pack id + blob id as variable binary: join keys)."""
    key = pc.binary_join_element_wise(
        table.column("pack_id").cast(pa.binary()), table.column("blob_id").cast(pa.binary()), b""
    )
    if "file" in table.column_names:
        return table.append_column("key", key)
    return table.select(
        ["offset", "stored_length", "raw_length", "codec", "unit_offset", "unit_length"]
    ).append_column("key", key)


# -- manifests -----------------------------------------------------------------------------------
def _point_chunks(data: bytes, point_id: str, key: str) -> tuple[str, pa.Array]:
    """The point's name and the distinct non-zero chunk ids it uses (an Arrow array), after
    full validation.  Column-wise: no Python object per chunk.  Unknown kinds are reported as
    bad manifests."""
    kind = read_header(data, key).get("kind")
    if kind == "files":
        from vmkeep.storage.file_manifest import decode_file_point

        fpoint = decode_file_point(data, point_id)
        ids = fpoint.table.column("chunks").combine_chunks().flatten()
        return fpoint.name, _distinct_nonzero([ids])
    if kind not in ("image", "vm"):
        raise FormatError(key, f"restore point kind {kind!r} is unknown to this version")
    name = str(read_header(data, key)["name"])
    return name, _distinct_nonzero(list(iter_blob_ids(data, point_id)))


def _pieces_indexed(
    repo: Repository, entry: PackEntry, payload: bytes | memoryview, key: str
) -> bool:
    """Whether every stored piece of the recipe ``entry`` (its decrypted ``payload``) is indexed.
    Prune keeps the pieces of every referenced recipe, so a recipe missing one is unreferenced
    (a missing piece of a referenced recipe is reported by the reference check).  Raises
    ``DataCorrupt`` for a malformed recipe."""
    pieces = decode_recipe(payload, entry.raw_length, key)
    return all(p == ZERO_ID or repo.locate(p) is not None for p, _ in pieces)


def _check_piece(
    repo: Repository,
    entry: PackEntry,
    data: bytes,
    key: str,
    entries: list[PackEntry],
    units: dict[int, bytes | StorageError],
) -> bool:
    """Whether the piece ``entry`` (codec 3) of the pack ``data`` verifies: its unit decodes
    (once per unit: ``units`` keeps each decoded unit, or the error) and the slice matches its
    keyed id."""
    unit = units.get(entry.offset)
    if unit is None:
        members = [e.blob_id for e in entries if e.codec == CODEC_UNIT and e.offset == entry.offset]
        stored = data[entry.offset : entry.offset + entry.stored_length]
        try:
            unit = repo.decode_unit(stored, entry.unit_length, key, members)
        except StorageError as exc:
            unit = exc
        units[entry.offset] = unit
    if isinstance(unit, StorageError):
        return False
    loc = BlobLocation(b"", entry.offset, entry.stored_length, entry.raw_length, entry.codec,
                       entry.unit_offset, entry.unit_length)
    try:
        repo.unit_piece(entry.blob_id, unit, loc, key)
    except StorageError:
        return False
    return True


def _distinct_nonzero(arrays: list[pa.Array]) -> pa.Array:
    if not arrays:
        return pa.array([], pa.binary(ID_SIZE))
    ids = pc.unique(pa.chunked_array(arrays, pa.binary(ID_SIZE)).combine_chunks())
    return ids.filter(pc.not_equal(ids, pa.scalar(ZERO_ID, pa.binary(ID_SIZE))))


def _check_references(
    referenced: list[pa.Array],
    index: pa.Table,
    packs: dict[bytes, int],
    bad_blobs: dict[bytes, tuple[str, str]],
) -> None:
    """Every chunk a manifest references is indexed in an existing pack."""
    if not referenced:
        return
    ids = pc.unique(pa.chunked_array(referenced, pa.binary(ID_SIZE)).combine_chunks())
    present = pa.array(list(packs), pa.binary(ID_SIZE))
    known = index.column("blob_id")
    stored = index.filter(pc.is_in(index.column("pack_id"), value_set=present)).column("blob_id")
    unindexed = ids.filter(pc.invert(pc.is_in(ids, value_set=known)))
    for blob_id in id_list(unindexed):
        bad_blobs[blob_id] = (
            "missing-chunk",
            "chunk is not in any index (`vmkeep repair index` lists it again if a pack holds it)",
        )
    lost = ids.filter(pc.and_(pc.is_in(ids, value_set=known),
                              pc.invert(pc.is_in(ids, value_set=stored))))
    if len(lost):
        rows = index.filter(pc.is_in(index.column("blob_id"), value_set=lost))
        for blob_id, pack_id in zip(
            id_list(rows.column("blob_id")), id_list(rows.column("pack_id")), strict=True
        ):
            bad_blobs.setdefault(blob_id, ("missing-pack", f"pack {pack_id.hex()} is missing"))


def _users(
    repo: Repository, names: dict[str, str], bad: set[bytes]
) -> dict[bytes, list[tuple[str, str, int | str, int]]]:
    """Where each damaged chunk is used: (point, name, disk number or file path, offset).
    A second pass over the manifests, expanding only rows that use a damaged chunk."""
    wanted = pa.array(sorted(bad), pa.binary(ID_SIZE))
    users: dict[bytes, list[tuple[str, str, int | str, int]]] = defaultdict(list)
    for point_id, name in names.items():
        key = point_key(point_id)
        try:
            data = repo.backend.get(key)
            kind = read_header(data, key).get("kind")
            if kind == "files":
                from vmkeep.storage.file_manifest import decode_file_point

                _file_users(decode_file_point(data, point_id).table, wanted, point_id, name, users)
            else:
                _image_users(data, wanted, point_id, name, users)
        except StorageError:
            continue  # reported by the first pass
    return users


def _master_index(
    rows: pa.Table, packs: dict[bytes, int], damaged: set[tuple[bytes, bytes]]
) -> MasterIndex:
    """The location a restore would use for each chunk: first copies in existing packs that no
    check recorded as damaged (a healed chunk is checked at its new copy); the other copies
    follow, so a chunk whose every copy is gone or damaged is still found at one of them."""
    index = MasterIndex()
    table = rows.drop_columns(["file"]) if "file" in rows.column_names else rows
    table = table.replace_schema_metadata(INDEX_SCHEMA.metadata)
    listed = set(id_list(pc.unique(table.column("pack_id")))) if table.num_rows else set()
    missing = listed - set(packs)
    index.add_table(usable_rows(table, missing, damaged) if missing or damaged else table)
    if missing or damaged:
        index.add_table(table)  # first copies win: this adds only chunks with no usable copy
    return index


def _image_users(
    data: bytes, wanted: pa.Array, point_id: str, name: str,
    users: dict[bytes, list[tuple[str, str, int | str, int]]],
) -> None:
    source = pq.ParquetFile(pa.BufferReader(data))
    for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=["disk", "offset", "blob_id"],
                                      use_threads=False):
        hits = batch.filter(pc.fill_null(pc.is_in(batch.column("blob_id"), value_set=wanted),
                                         False))
        for row in hits.to_pylist():
            users[row["blob_id"]].append((point_id, name, row["disk"], row["offset"]))


def _file_users(
    table: pa.Table, wanted: pa.Array, point_id: str, name: str,
    users: dict[bytes, list[tuple[str, str, int | str, int]]],
) -> None:
    chunks = table.column("chunks").combine_chunks()
    flat = chunks.flatten()
    hit = pc.fill_null(pc.is_in(flat, value_set=wanted), False)
    if not pc.any(hit).as_py():
        return
    lengths = pc.cast(table.column("chunk_lengths").combine_chunks().flatten(), pa.int64())
    ends = pc.cumulative_sum(lengths)
    parents = pc.list_parent_indices(chunks)
    firsts = pc.subtract(ends, lengths)  # running offset of each chunk across all files
    for at in pc.indices_nonzero(hit).to_pylist():
        row = parents[at].as_py()
        start = firsts[_first_chunk(chunks, row)].as_py()
        path = table.column("path")[row].as_py().decode("utf-8", "surrogateescape")
        users[flat[at].as_py()].append((point_id, name, path, firsts[at].as_py() - start))


def _first_chunk(chunks: pa.ListArray, row: int) -> int:
    """Position in ``chunks.flatten()`` of row ``row``'s first chunk."""
    return int(chunks.offsets[row].as_py() - chunks.offsets[0].as_py())


# -- data ----------------------------------------------------------------------------------------
def _check_pack(
    repo: Repository,
    pack_id: bytes,
    index: pa.Table,
    master: MasterIndex,
    report: CheckReport,
    bad_blobs: dict[bytes, tuple[str, str]],
    progress: Callable[[int], None] | None,
) -> list[PackEntry]:
    """Read one pack whole: its name must be its BLAKE3, its trailer parse, every blob decode
    and match its keyed id.  Returns the trailer's entries (``[]`` when unreadable)."""
    key = pack_key(pack_id)
    data = repo.backend.get(key)
    report.bytes_read += len(data)
    if progress:
        progress(len(data))
    if pack_digest(data) != pack_id:
        detail = f"pack {pack_id.hex()} content does not match its name"
    else:
        detail = ""
    try:
        entries = parse_pack(data, key, repo.cipher)
    except StorageError as exc:
        entries = []
        detail = detail or exc.get_message()
    replaced = 0
    units: dict[int, bytes | StorageError] = {}  # pack offset -> decoded unit (or why not)
    for entry in entries:
        loc = master.get(entry.blob_id)
        if loc is not None and loc.pack_id != pack_id:
            replaced += 1
            continue  # a second copy (e.g. the damaged one a backup replaced): never read
        if entry.codec == CODEC_UNIT:
            if not _check_piece(repo, entry, data, key, entries, units):
                what = (
                    f"a damaged compression unit (offset {entry.offset})"
                    if isinstance(units.get(entry.offset), StorageError)
                    else "a damaged chunk"
                )
                bad_blobs[entry.blob_id] = ("corrupt-chunk", f"pack {pack_id.hex()} holds {what}")
            continue
        try:
            if entry.codec == CODEC_RECIPE:
                stored = data[entry.offset : entry.offset + entry.stored_length]
                payload = (stored if repo.cipher is None
                           else repo.cipher.open_blob(entry.blob_id, stored, key))
                if not _pieces_indexed(repo, entry, payload, key):
                    continue  # an unreferenced recipe whose pieces prune removed: nothing to read
                if repo.config.recipe_ids:
                    # version 5: the recipe is the frame's identity, and every piece is read
                    # and authenticated in its own pack: nothing to join and hash again
                    repo.check_recipe_id(entry.blob_id, payload, key)
                    continue
            repo.decode_payload(
                entry.blob_id,
                entry.codec,
                data[entry.offset : entry.offset + entry.stored_length],
                entry.raw_length,
                key,
            )
        except StorageError:
            bad_blobs[entry.blob_id] = (
                "corrupt-chunk",
                f"pack {pack_id.hex()} holds a damaged chunk",
            )
    if detail:
        if entries and replaced and not any(e.blob_id in bad_blobs for e in entries):
            # every chunk read from it verifies: the damage is in copies backups replaced
            report.warnings.append(
                f"{detail}; only in chunks stored again elsewhere (healed), the rest verify"
            )
        elif entries:
            report.problems.append(Problem("corrupt-pack", detail, key))
        else:
            # Blobs of a damaged pack whose trailer could not be read: every indexed blob in it.
            mask = pc.equal(index.column("pack_id"), pa.scalar(pack_id, pa.binary(ID_SIZE)))
            for blob_id in id_list(index.filter(mask).column("blob_id")):
                bad_blobs.setdefault(blob_id, ("corrupt-pack", detail))
    return entries
