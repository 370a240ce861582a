"""A compact in-memory master index: sorted numpy arrays instead of a dict per blob.

Same contract as :class:`vmkeep.storage.index.MasterIndex` (first copy of a blob wins; safe
for concurrent readers while one thread adds), in about 53 bytes per blob instead of ~150:

* ``ids``: the full 32-byte blob ids, sorted (``numpy`` ``S32``: lookups are exact, never on a
  truncated id — a false "known" would skip storing a chunk);
* per id, in the same order: pack number (``uint32``), offset (``uint64``), stored and raw
  length (``uint32``), codec (``uint8``); pack ids once each in a list.

Lookups are a binary search (``searchsorted``); :meth:`has_many` searches a whole batch at once.
Rows added one by one (a backup session's new blobs, :meth:`add`) wait in a small dict and are
merged into the arrays when it grows past :data:`MERGE_EVERY`; tables added by index files
(:meth:`add_table`) are merged before the next lookup, so loading N index files sorts once.

Concurrency: the arrays are replaced, never changed in place, as one tuple; a reader looks at
the pending dict before the arrays, and a merge publishes the new arrays before it empties the
dict, so a reader never misses a blob that was added before its lookup began.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vmkeep.storage.codec import ID_SIZE
from vmkeep.storage.errors import FormatError
from vmkeep.storage.index import SCHEMA, BlobLocation, id_list
from vmkeep.storage.pack import PackEntry

#: Rows added one by one are merged into the sorted arrays past this many.
MERGE_EVERY = 65536
ID_DTYPE = np.dtype(f"S{ID_SIZE}")


class _Arrays(NamedTuple):
    ids: np.ndarray
    pack: np.ndarray
    offset: np.ndarray
    stored: np.ndarray
    raw: np.ndarray
    codec: np.ndarray


def _empty() -> _Arrays:
    return _Arrays(
        np.empty(0, ID_DTYPE),
        np.empty(0, np.uint32),
        np.empty(0, np.uint64),
        np.empty(0, np.uint32),
        np.empty(0, np.uint32),
        np.empty(0, np.uint8),
    )


def _numbers(column: pa.Array, dtype: type) -> np.ndarray:
    """A non-null integer Arrow column as a numpy array of ``dtype``."""
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype)


def _key(blob_id: bytes) -> bytes:
    """``blob_id`` as numpy's ``S32`` scalars compare: numpy pads fixed-width byte strings with
    NULs and drops trailing NULs when it hands a value out, so a 32-byte id ending in zero
    bytes reads back shorter (the same 32 bytes stored)."""
    return blob_id.rstrip(b"\0")


class CompactIndex:
    """All known blobs in sorted arrays (see the module docstring)."""

    def __init__(self) -> None:
        self._arrays = _empty()
        self._recent: dict[bytes, tuple[int, int, int, int, int]] = {}
        self._tables: list[_Arrays] = []  # added by add_table, not merged yet
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
        )
        if len(self._recent) >= MERGE_EVERY:
            self._merge()

    def add_table(self, table: pa.Table) -> None:
        """Add every row of an index table (:data:`~vmkeep.storage.index.SCHEMA`); the first
        copy of a blob wins.  ``FormatError`` on NULL values (a forged index)."""
        if table.num_rows == 0:
            return
        if self._recent:  # rows added one by one came first: they win over this table's
            self._merge()
        cols = {name: table.column(name).combine_chunks() for name in SCHEMA.names}
        if any(c.null_count for c in cols.values()):
            raise FormatError("index", "NULL value in an index table")
        id_col = cols["blob_id"]  # fixed-size binary: one buffer of 32-byte values
        ids = np.frombuffer(
            id_col.buffers()[1], ID_DTYPE, len(id_col), id_col.offset * ID_SIZE
        ).copy()
        packs = pc.dictionary_encode(cols["pack_id"])
        numbers = np.array([self._pack_number(p) for p in id_list(packs.dictionary)], np.uint32)
        pack = numbers[_numbers(packs.indices, np.int64)]
        with self._lock:
            self._tables.append(
                _Arrays(
                    ids,
                    pack,
                    _numbers(cols["offset"], np.uint64),
                    _numbers(cols["stored_length"], np.uint32),
                    _numbers(cols["raw_length"], np.uint32),
                    _numbers(cols["codec"], np.uint8),
                )
            )

    def _merge(self) -> None:
        """Fold pending rows into new sorted arrays; earlier copies win (arrays, then pending
        tables in order, then rows added one by one)."""
        with self._lock:
            recent, tables = self._recent, self._tables
            if not recent and not tables:
                return
            parts = [self._arrays, *tables]
            if recent:
                rows = list(recent.values())
                parts.append(
                    _Arrays(
                        np.array(list(recent), ID_DTYPE),
                        *(np.array([r[i] for r in rows], t) for i, t in enumerate(_TYPES)),
                    )
                )
            merged = _Arrays(*(np.concatenate(col) for col in zip(*parts, strict=True)))
            # np.unique returns the index of each id's first occurrence, ids sorted
            _ids, first = np.unique(merged.ids, return_index=True)
            self._arrays = _Arrays(*(col[first] for col in merged))
            self._tables = []
            self._recent = {}  # after publishing the arrays: readers look here first

    def _current(self) -> tuple[dict[bytes, tuple[int, int, int, int, int]], _Arrays]:
        if self._tables:
            self._merge()
        recent = self._recent  # before the arrays (see the module docstring)
        return recent, self._arrays

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        recent, arrays = self._current()
        return len(arrays.ids) + len(recent)

    def _find(self, arrays: _Arrays, blob_id: bytes) -> int:
        ids = arrays.ids
        i = int(np.searchsorted(ids, blob_id))
        return i if i < len(ids) and ids[i] == _key(blob_id) else -1

    def __contains__(self, blob_id: object) -> bool:
        if not isinstance(blob_id, bytes) or len(blob_id) != ID_SIZE:
            return False
        recent, arrays = self._current()
        return blob_id in recent or self._find(arrays, blob_id) >= 0

    def has_many(self, blob_ids: Iterable[bytes]) -> list[bool]:
        """``[blob_id in self for blob_id in blob_ids]``, one vectorised search."""
        wanted = list(blob_ids)
        recent, arrays = self._current()
        if not wanted:
            return []
        keys = np.array(wanted, ID_DTYPE)
        pos = np.searchsorted(arrays.ids, keys)
        found = np.zeros(len(keys), bool)
        inside = pos < len(arrays.ids)
        found[inside] = arrays.ids[pos[inside]] == keys[inside]
        return [bool(f) or b in recent for f, b in zip(found, wanted, strict=True)]

    def get(self, blob_id: bytes) -> BlobLocation | None:
        recent, arrays = self._current()
        row = recent.get(blob_id)
        if row is not None:
            pack_no, offset, stored, raw, codec = row
            return BlobLocation(self._packs[pack_no], offset, stored, raw, codec)
        i = self._find(arrays, blob_id)
        if i < 0:
            return None
        return BlobLocation(
            self._packs[int(arrays.pack[i])],
            int(arrays.offset[i]),
            int(arrays.stored[i]),
            int(arrays.raw[i]),
            int(arrays.codec[i]),
        )

    def packs(self) -> set[bytes]:
        return set(self._packs)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        recent, arrays = self._current()
        for blob_id in [bytes(b).ljust(ID_SIZE, b"\0") for b in arrays.ids] + list(recent):
            loc = self.get(blob_id)
            if loc is not None:
                yield blob_id, loc

    def forget_packs(self, missing: set[bytes]) -> int:
        """Drop every blob stored in ``missing`` packs (a backup then re-stores them)."""
        if not missing:
            return 0
        self._merge()
        gone = np.array(sorted(self._pack_no[p] for p in missing if p in self._pack_no), np.uint32)
        with self._lock:
            arrays = self._arrays
            doomed = np.isin(arrays.pack, gone)
            self._arrays = _Arrays(*(col[~doomed] for col in arrays))
        return int(doomed.sum())

    def nbytes(self) -> int:
        """Bytes held by the arrays (pending rows and pack ids not counted)."""
        _recent, arrays = self._current()
        return sum(col.nbytes for col in arrays)


_TYPES = (np.uint32, np.uint64, np.uint32, np.uint32, np.uint8)
