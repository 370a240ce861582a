"""Which pieces the recipes among a set of referenced blobs list — for prune's mark phase.

A frame stored as a recipe (codec 2, repository version 2; see :mod:`vmkeep.storage.codec`)
references its pieces: whatever keeps the recipe must keep them.  Manifests list only frames,
so a mark phase expands the referenced recipes here.

Contract: :class:`RecipeTable` holds the locations of every recipe the index files list (and
of those in packs no index lists, read from their trailers), as
Arrow columns (about 80 bytes per recipe, outside the Python heap), read once.  :meth:`pieces`
reads the recipes among the given ids — recipes of one backup lie back to back in their own
packs, so runs of them are fetched with one ranged ``get`` of at most :data:`MAX_RUN` bytes —
and yields their non-zero piece ids as Arrow arrays, one per run.  Nothing here is cached per
recipe.  ``BlobMissing`` / ``DataCorrupt`` when a recipe cannot be read — missing, damaged, or
(version 5) not the recipe its id names (:meth:`Repository.open_recipe`): the caller (prune)
must then delete nothing, since it cannot see which pieces that recipe keeps alive.  In
versions 2-4 a recipe is authenticated only by its frame's bytes (the pieces joined), which a
mark phase does not read: there a forged recipe of an unencrypted repository goes unnoticed
here (``check --read-data`` reports it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from vmkeep.storage.codec import CODEC_RECIPE, ID_SIZE, ZERO_ID, decode_recipe
from vmkeep.storage.errors import (
    BlobMissing,
    DataCorrupt,
    IndexUnreadable,
    ObjectNotFound,
    StorageError,
)
from vmkeep.storage.index import read_index
from vmkeep.storage.pack import list_packs, pack_id_from_key, pack_key, read_trailer
from vmkeep.storage.repository import Repository

ID_TYPE = pa.binary(ID_SIZE)
#: Largest ranged read of back-to-back recipes.
MAX_RUN = 4 * 1024 * 1024
_COLUMNS = ["blob_id", "pack_id", "offset", "stored_length", "raw_length"]


class RecipeTable:
    """Locations of the recipes listed by ``repo``'s index files (first copy of each), and by
    the trailers of packs no index file lists.  An unreadable index file raises
    :class:`~vmkeep.storage.errors.IndexUnreadable` (prune stops), or with ``skip_unreadable``
    (``check``, which reports it) is passed over: its packs are then read as unlisted ones."""

    def __init__(self, repo: Repository, *, skip_unreadable: bool = False) -> None:
        self.repo = repo
        tables = []
        if repo.config.image_cdc is not None:  # a version-1 repository has no recipes
            packs = {pack_id_from_key(k): size for k, size in list_packs(repo.backend)}
            present = pa.array(list(packs), ID_TYPE)
            listed: set[bytes] = set()
            for key, _size in repo.backend.list("index"):
                try:
                    table = read_index(repo.backend, key)
                except IndexUnreadable:
                    if not skip_unreadable:
                        raise
                    continue
                table = table.replace_schema_metadata(None)
                listed.update(pc.unique(table.column("pack_id")).to_pylist())
                recipes = table.filter(pc.equal(table.column("codec"), CODEC_RECIPE))
                # copies in missing packs are left out: a backup that healed the recipe stored
                # another copy, which is then the one followed
                recipes = recipes.filter(pc.is_in(recipes.column("pack_id"), value_set=present))
                if recipes.num_rows:
                    tables.append(recipes.select(_COLUMNS))
            tables.extend(_unindexed_recipes(repo, listed, packs))
        if tables:
            table = pa.concat_tables(tables).combine_chunks()
            first = pc.index_in(table.column("blob_id"), value_set=pc.unique(table["blob_id"]))
            # keep one row per recipe id (any copy is valid)
            _, keep = _first_rows(first)
            self.table = table.take(keep)
        else:
            self.table = pa.table({c: pa.array([], t) for c, t in _types().items()})
        self.ids = self.table.column("blob_id").combine_chunks()

    def __len__(self) -> int:
        return self.table.num_rows

    def recipes_among(self, ids: pa.Array) -> pa.Array:
        """The ids among ``ids`` that are recipes."""
        if not len(self):
            return pa.array([], ID_TYPE)
        return ids.filter(pc.is_in(ids, value_set=self.ids))

    def pieces(self, ids: pa.Array) -> Iterator[pa.Array]:
        """Non-zero piece ids of the recipes ``ids`` (unique recipe ids, all in this table),
        one array per run of recipes read together.  Raises like :meth:`by_recipe`."""
        for run in self._runs(ids):
            found = [p for _, pieces in self._read(*run) for p in pieces]
            yield pc.unique(pa.array(found, ID_TYPE))

    def by_recipe(
        self, ids: pa.Array, on_unreadable: Callable[[bytes, StorageError], None] | None = None
    ) -> Iterator[tuple[bytes, list[bytes]]]:
        """``(recipe id, its non-zero piece ids)`` for the recipes ``ids``.  ``BlobMissing`` /
        ``DataCorrupt`` for a recipe that cannot be read, unless ``on_unreadable`` is given:
        then that recipe is left out and ``on_unreadable(recipe id, error)`` told (a check
        reports it; the others in its run are still read, one by one)."""
        for run in self._runs(ids):
            try:
                yield from self._read(*run)
            except StorageError:
                if on_unreadable is None:
                    raise
                for blob_id in run[1]:  # one by one: only the unreadable ones are left out
                    try:
                        pieces = self.repo.recipe_pieces(blob_id)
                    except StorageError as exc:
                        on_unreadable(blob_id, exc)
                        continue
                    if pieces is not None:
                        yield blob_id, pieces

    def _runs(
        self, ids: pa.Array
    ) -> Iterator[tuple[bytes, list[bytes], list[int], list[int], list[int]]]:
        """Recipes ``ids`` grouped into runs read with one ranged get each."""
        if not len(ids) or not len(self):
            return
        rows = self.table.take(pc.index_in(ids, value_set=self.ids).drop_null())
        rows = rows.sort_by([("pack_id", "ascending"), ("offset", "ascending")])
        packs = rows.column("pack_id").to_pylist()
        offsets = rows.column("offset").to_pylist()
        stored = rows.column("stored_length").to_pylist()
        raw = rows.column("raw_length").to_pylist()
        blob_ids = rows.column("blob_id").to_pylist()
        start = 0
        while start < len(packs):
            end = start + 1
            while (
                end < len(packs)
                and packs[end] == packs[start]
                and offsets[end] >= offsets[end - 1] + stored[end - 1]
                and offsets[end] + stored[end] - offsets[start] <= MAX_RUN
            ):
                end += 1
            yield (
                packs[start],
                blob_ids[start:end],
                offsets[start:end],
                stored[start:end],
                raw[start:end],
            )
            start = end

    def _read(
        self,
        pack_id: bytes,
        blob_ids: list[bytes],
        offsets: list[int],
        stored: list[int],
        raw: list[int],
    ) -> list[tuple[bytes, list[bytes]]]:
        key = pack_key(pack_id)
        base = offsets[0]
        length = offsets[-1] + stored[-1] - base
        try:
            data = self.repo.backend.get(key, base, length)
        except ObjectNotFound:
            raise BlobMissing(blob_ids[0].hex()[:16], pack_id.hex()[:16]) from None
        if len(data) != length:
            raise DataCorrupt(key, f"pack truncated at offset {base + len(data)}")
        view = memoryview(data)
        out: list[tuple[bytes, list[bytes]]] = []
        for blob_id, offset, size, raw_length in zip(blob_ids, offsets, stored, raw, strict=True):
            stored_recipe = view[offset - base : offset - base + size]
            payload = self.repo.open_recipe(blob_id, stored_recipe, key)
            pieces = decode_recipe(payload, raw_length, key)
            out.append((blob_id, list(dict.fromkeys(p for p, _ in pieces if p != ZERO_ID))))
        return out


def _unindexed_recipes(
    repo: Repository, listed: set[bytes], packs: dict[bytes, int]
) -> list[pa.Table]:
    """Recipes in packs no index file lists (a crashed backup, a lost index file), from the
    packs' trailers: prune may rescue such a pack, and must then keep its recipes' pieces too.
    An unreadable trailer is skipped (prune cannot rescue that pack either)."""
    out = []
    for pack_id, size in packs.items():
        if pack_id in listed:
            continue
        try:
            entries = read_trailer(repo.backend, pack_id, size, repo.cipher)
        except StorageError:
            continue
        rows = [e for e in entries if e.codec == CODEC_RECIPE]
        if rows:
            out.append(
                pa.table(
                    {
                        "blob_id": pa.array([e.blob_id for e in rows], ID_TYPE),
                        "pack_id": pa.array([pack_id] * len(rows), ID_TYPE),
                        "offset": pa.array([e.offset for e in rows], pa.uint64()),
                        "stored_length": pa.array([e.stored_length for e in rows], pa.uint32()),
                        "raw_length": pa.array([e.raw_length for e in rows], pa.uint32()),
                    }
                )
            )
    return out


def _types() -> dict[str, pa.DataType]:
    return {
        "blob_id": ID_TYPE,
        "pack_id": ID_TYPE,
        "offset": pa.uint64(),
        "stored_length": pa.uint32(),
        "raw_length": pa.uint32(),
    }


def _first_rows(groups: pa.Array) -> tuple[pa.Array, pa.Array]:
    """For group numbers per row, the distinct groups and the first row of each."""
    table = pa.table({"g": groups, "row": pa.array(range(len(groups)), pa.int64())})
    firsts = table.group_by("g", use_threads=False).aggregate([("row", "min")])
    return firsts.column("g"), firsts.column("row_min").combine_chunks()
