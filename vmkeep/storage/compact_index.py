"""A compact in-memory master index: sorted flat buffers instead of a dict entry per blob.

Same contract as :class:`vmkeep.storage.index.MasterIndex` (first copy of a blob wins; safe
for concurrent readers while one thread adds), in about 61 bytes per blob instead of ~160:

* ``ids``: the full 32-byte blob ids, sorted, back to back in one ``bytes`` (lookups are exact,
  never on a truncated id — a false "known" would skip storing a chunk);
* per id, in the same order, ``array`` columns: pack number (``I``), offset (``Q``), stored and
  raw length (``I``), codec (one byte), a piece's offset in its compression unit and the unit's
  length (``I``, index version 2); pack ids once each in a list.

Lookups are a binary search (:func:`bisect.bisect_left` over the sorted ids).  Sorting and
de-duplicating use Arrow compute kernels (``sort_indices`` is stable, so the first copy of an id
stays first), which run on the calling thread: no Arrow worker thread (see
``tests/cli/test_exit_clean.py``).  No numpy: with numpy installed, ``import pyarrow`` imports it
too, and numpy's BLAS starts native threads in every vmkeep process.

Rows added one by one (a backup session's new blobs, :meth:`add`) wait in a small dict and are
merged into the buffers past :data:`MERGE_EVERY`; tables added from index files
(:meth:`add_table`) are merged before the next lookup, so loading N index files sorts once.
Concurrency: the buffers are replaced, never changed in place, as one tuple; a reader looks at
the pending dict before the buffers, and a merge publishes the new buffers before it replaces
the dict, so a reader never misses a blob that was added before its lookup began.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from vmkeep.storage.codec import ID_SIZE
from vmkeep.storage.errors import FormatError
from vmkeep.storage.index import BlobLocation, id_list, upgrade
from vmkeep.storage.pack import PackEntry

if TYPE_CHECKING:
    import pyarrow as pa

#: Rows added one by one are merged into the sorted buffers past this many.
MERGE_EVERY = 65536
_COLUMNS = ("offset", "stored_length", "raw_length", "codec", "unit_offset", "unit_length")
_CODES = {"pack": "I", "offset": "Q", "stored_length": "I", "raw_length": "I", "codec": "B",
          "unit_offset": "I", "unit_length": "I"}
_Row = tuple[int, int, int, int, int, int, int]


class _Ids:
    """The sorted ids as a sequence of 32-byte ``bytes`` (for :func:`bisect_left`)."""

    __slots__ = ("buf", "n")

    def __init__(self, buf: bytes) -> None:
        self.buf, self.n = buf, len(buf) // ID_SIZE

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> bytes:
        return self.buf[i * ID_SIZE : (i + 1) * ID_SIZE]


class _Arrays(NamedTuple):
    ids: _Ids
    pack: array[int]
    offset: array[int]
    stored: array[int]
    raw: array[int]
    codec: array[int]
    unit_offset: array[int]
    unit_length: array[int]


def _empty() -> _Arrays:
    return _Arrays(_Ids(b""), array("I"), array("Q"), array("I"), array("I"), array("B"),
                   array("I"), array("I"))


class CompactIndex:
    """All known blobs in sorted buffers (see the module docstring)."""

    def __init__(self) -> None:
        self._arrays = _empty()
        self._recent: dict[bytes, _Row] = {}
        self._tables: list[pa.Table] = []  # added by add_table, not merged yet
        self._packs: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        self._lock = threading.Lock()  # merges (readers may trigger one)

    # -- adding --------------------------------------------------------------------------------
    def _pack_number(self, pack_id: bytes) -> int:
        pack_no = self._pack_no.get(pack_id)
        if pack_no is None:
            pack_no = self._pack_no[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        return pack_no

    def add(self, pack_id: bytes, entry: PackEntry) -> None:
        if entry.blob_id in self:
            return
        self._recent[entry.blob_id] = (
            self._pack_number(pack_id),
            entry.offset,
            entry.stored_length,
            entry.raw_length,
            entry.codec,
            entry.unit_offset,
            entry.unit_length,
        )
        if len(self._recent) >= MERGE_EVERY:
            self._merge()

    def add_table(self, table: pa.Table) -> None:
        """Add every row of an index table (the index file schema); the first copy of a blob
        wins.  ``FormatError`` on NULL values (a forged index)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if table.num_rows == 0:
            return
        if self._recent:  # rows added one by one came first: they win over this table's
            self._merge()
        table = upgrade(table)  # index version 1: unit columns of zeros
        cols = {n: table.column(n).combine_chunks() for n in ("blob_id", "pack_id", *_COLUMNS)}
        if any(c.null_count for c in cols.values()):
            raise FormatError("index", "NULL value in an index table")
        packs = pc.dictionary_encode(cols["pack_id"])
        numbers = pa.array([self._pack_number(p) for p in id_list(packs.dictionary)], pa.uint32())
        cols["pack"] = pc.take(numbers, packs.indices)
        del cols["pack_id"]
        with self._lock:
            self._tables.append(pa.table(cols))

    def _merge(self) -> None:
        """Fold pending rows into new sorted buffers; earlier copies win (the buffers, then
        pending tables in order, then rows added one by one)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        with self._lock:
            recent, tables = self._recent, self._tables
            if not recent and not tables:
                return
            old = self._arrays
            parts = [_as_table(old), *tables]
            if recent:
                rows = list(recent.values())
                parts.append(
                    pa.table(
                        {
                            "blob_id": pa.array(list(recent), pa.binary(ID_SIZE)),
                            **{
                                name: pa.array([r[i] for r in rows], _arrow_type(name))
                                for i, name in enumerate(("pack", *_COLUMNS))
                            },
                        }
                    )
                )
            merged = pa.concat_tables(
                [p.select(["blob_id", "pack", *_COLUMNS]) for p in parts]
            ).combine_chunks()
            column = {n: merged.column(n).combine_chunks() for n in merged.column_names}
            order = pc.sort_indices(column["blob_id"])  # stable: first copies first
            ids = pc.take(column["blob_id"], order)
            if len(ids) > 1:
                later_copy = pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))
                keep = pa.concat_arrays([pa.array([True]), pc.invert(later_copy)])
                order, ids = pc.filter(order, keep), pc.filter(ids, keep)
            taken = {name: pc.take(column[name], order) for name in ("pack", *_COLUMNS)}
            self._arrays = _Arrays(
                _Ids(_buffer(ids, ID_SIZE)),
                *(
                    array(_CODES[n], _buffer(taken[n], array(_CODES[n]).itemsize))
                    for n in ("pack", *_COLUMNS)
                ),
            )
            self._tables = []
            self._recent = {}  # after publishing the buffers: readers look here first
            del merged, column, order, ids, taken, parts
            pa.default_memory_pool().release_unused()  # Arrow's sort/take scratch

    def _current(self) -> tuple[dict[bytes, _Row], _Arrays]:
        if self._tables:
            self._merge()
        recent = self._recent  # before the buffers (see the module docstring)
        return recent, self._arrays

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        recent, arrays = self._current()
        return len(arrays.ids) + len(recent)

    @staticmethod
    def _find(arrays: _Arrays, blob_id: bytes) -> int:
        ids = arrays.ids
        i = bisect_left(ids, blob_id)
        return i if i < len(ids) and ids[i] == blob_id else -1

    def __contains__(self, blob_id: object) -> bool:
        if not isinstance(blob_id, bytes) or len(blob_id) != ID_SIZE:
            return False
        recent, arrays = self._current()
        return blob_id in recent or self._find(arrays, blob_id) >= 0

    def has_many(self, blob_ids: Iterable[bytes]) -> list[bool]:
        """``[blob_id in self for blob_id in blob_ids]``."""
        recent, arrays = self._current()
        return [b in recent or self._find(arrays, b) >= 0 for b in blob_ids]

    def get(self, blob_id: bytes) -> BlobLocation | None:
        recent, arrays = self._current()
        row = recent.get(blob_id)
        if row is not None:
            pack_no, offset, stored, raw, codec, unit_offset, unit_length = row
            return BlobLocation(
                self._packs[pack_no], offset, stored, raw, codec, unit_offset, unit_length
            )
        i = self._find(arrays, blob_id)
        if i < 0:
            return None
        return BlobLocation(
            self._packs[arrays.pack[i]],
            arrays.offset[i],
            arrays.stored[i],
            arrays.raw[i],
            arrays.codec[i],
            arrays.unit_offset[i],
            arrays.unit_length[i],
        )

    def packs(self) -> set[bytes]:
        return set(self._packs)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        recent, arrays = self._current()
        for blob_id in [arrays.ids[i] for i in range(len(arrays.ids))] + list(recent):
            loc = self.get(blob_id)
            if loc is not None:
                yield blob_id, loc

    def forget_packs(self, missing: set[bytes]) -> int:
        """Drop every blob stored in ``missing`` packs (a backup then re-stores them)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not missing:
            return 0
        self._merge()
        gone = pa.array(
            sorted(self._pack_no[p] for p in missing if p in self._pack_no), pa.uint32()
        )
        with self._lock:
            table = _as_table(self._arrays)
            doomed = pc.is_in(table.column("pack").combine_chunks(), value_set=gone)
            kept = table.filter(pc.invert(doomed)).combine_chunks()
            self._arrays = _Arrays(
                _Ids(_buffer(kept.column("blob_id").chunk(0), ID_SIZE)),
                *(
                    array(_CODES[n], _buffer(kept.column(n).chunk(0), array(_CODES[n]).itemsize))
                    for n in ("pack", *_COLUMNS)
                ),
            )
        return int(pc.sum(doomed).as_py() or 0)

    def nbytes(self) -> int:
        """Bytes held by the sorted buffers (pending rows and pack ids not counted)."""
        _recent, arrays = self._current()
        return len(arrays.ids.buf) + sum(len(c) * c.itemsize for c in arrays[1:])


def _arrow_type(name: str) -> pa.DataType:
    import pyarrow as pa

    return {
        "pack": pa.uint32(),
        "offset": pa.uint64(),
        "stored_length": pa.uint32(),
        "raw_length": pa.uint32(),
        "codec": pa.uint8(),
        "unit_offset": pa.uint32(),
        "unit_length": pa.uint32(),
    }[name]


def _as_table(arrays: _Arrays) -> pa.Table:
    """The buffers as an Arrow table (zero-copy views)."""
    import pyarrow as pa

    n = len(arrays.ids)
    cols = {
        "blob_id": pa.Array.from_buffers(
            pa.binary(ID_SIZE), n, [None, pa.py_buffer(arrays.ids.buf)]
        )
    }
    for name, col in zip(("pack", *_COLUMNS), arrays[1:], strict=True):
        cols[name] = pa.Array.from_buffers(_arrow_type(name), n, [None, pa.py_buffer(col)])
    return pa.table(cols)


def _buffer(column: pa.Array, itemsize: int) -> bytes:
    """The values of a non-null fixed-width column (no nulls, any offset) as ``bytes``."""
    if len(column) == 0:
        return b""
    buf = column.buffers()[1]
    start = column.offset * itemsize
    return buf.to_pybytes()[start : start + len(column) * itemsize]
