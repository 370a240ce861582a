"""Index files (blob → pack, offset, lengths) and the in-memory master index.

Index file format (version 2; version 1 still read), Parquet under
``index/<hex blake3 of the file>.parquet``::

    blob_id        fixed_size_binary(32)   keyed BLAKE3 chunk id
    pack_id        fixed_size_binary(32)   BLAKE3 of the pack (its object name)
    offset         uint64                  payload offset inside the pack
    stored_length  uint32                  payload length
    raw_length     uint32                  decoded chunk length
    codec          uint8                   0 raw, 1 zstd, 2 recipe (repository version 2),
                                           3 piece inside a unit (repository version 4)
    unit_offset    uint32                  version 2: codec 3: the piece's offset in the
                                           decoded unit; else 0
    unit_length    uint32                  version 2: codec 3: the decoded unit's length; else 0
    schema metadata  b"vmkeep" = {"format": "vmkeep-index", "version": 1 | 2}

Version 1 (written in repositories of versions 1–3) has the first six columns only; version 2
(written in version-4 repositories) adds the last two.  For a piece inside a compression unit
(codec 3) ``offset``/``stored_length`` locate the unit's payload — shared by the unit's pieces —
and ``raw_length`` is the piece's length.  :func:`decode_index` returns every file, of either
version, as a table of :func:`index_schema` (all eight columns; version-1 rows get zeros), so
the rest of vmkeep sees one schema; :func:`encode_index` writes the repository's version.

pyarrow is imported only when an index is encoded or decoded (``vmkeep list`` never needs it):
:data:`SCHEMA` is built on first access.

Index files are immutable; each writer (backup session) writes its own, after its packs and
before its manifest, so concurrent backups never touch each other's files.  Several index files
may list the same blob (two writers stored it concurrently): any copy is valid.  Only prune
rewrites indexes (write the new one first, delete the superseded ones after).
"""

from __future__ import annotations

import io
import json
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from vmkeep.storage.codec import ID_SIZE
from vmkeep.storage.errors import DataCorrupt, FormatError, IndexUnreadable
from vmkeep.storage.pack import PackEntry

if TYPE_CHECKING:
    import pyarrow as pa

    from vmkeep.storage.backend import Backend

INDEX_FORMAT = "vmkeep-index"
#: The newest index file version (written in version-4 repositories; see the module docstring).
INDEX_VERSION = 2
#: Index file versions this code reads.
READABLE_INDEX_VERSIONS = (1, 2)
#: Column names of :data:`SCHEMA`, in order (no pyarrow needed); version 1 has the first six.
COLUMNS = (
    "blob_id", "pack_id", "offset", "stored_length", "raw_length", "codec", "unit_offset",
    "unit_length",
)
UNIT_COLUMNS = ("unit_offset", "unit_length")
_schemas: dict[int, pa.Schema] = {}


def index_schema(version: int = INDEX_VERSION) -> pa.Schema:
    """The schema of index files of ``version`` (built once, on first use: it imports pyarrow).
    Version 2's is also the in-memory schema of every decoded index table."""
    schema = _schemas.get(version)
    if schema is None:
        import pyarrow as pa

        fields = [
            ("blob_id", pa.binary(ID_SIZE)),
            ("pack_id", pa.binary(ID_SIZE)),
            ("offset", pa.uint64()),
            ("stored_length", pa.uint32()),
            ("raw_length", pa.uint32()),
            ("codec", pa.uint8()),
        ]
        if version >= 2:
            fields += [("unit_offset", pa.uint32()), ("unit_length", pa.uint32())]
        meta = {"format": INDEX_FORMAT, "version": version}
        schema = _schemas[version] = pa.schema(
            fields, metadata={b"vmkeep": json.dumps(meta).encode()}
        )
    return schema


def index_version(repo_version: int) -> int:
    """The index file version a repository of ``repo_version`` writes (2 with units)."""
    return 2 if repo_version >= 4 else 1


def for_version(table: pa.Table, version: int, where: str = "index") -> pa.Table:
    """``table`` (in :func:`index_schema`) as rows of an index file of ``version``: version 1
    drops the unit columns, refusing rows of codec 3 (``FormatError``: a version-1 index cannot
    name a piece inside a unit)."""
    if version >= 2:
        return table
    import pyarrow.compute as pc

    if table.num_rows and pc.any(pc.greater_equal(table.column("codec"), 3)).as_py():
        raise FormatError(where, "a version-1 index cannot list pieces inside units")
    return table.drop_columns([c for c in UNIT_COLUMNS if c in table.column_names])


def upgrade(table: pa.Table) -> pa.Table:
    """A version-1 index table (six columns) as a version-2 one (unit columns of zeros)."""
    import pyarrow as pa

    for name in UNIT_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.array([0] * table.num_rows, pa.uint32()))
    return table


def __getattr__(name: str) -> Any:
    """``SCHEMA`` for importers (``from vmkeep.storage.index import SCHEMA``), built lazily."""
    if name == "SCHEMA":
        return index_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: bytes
    offset: int
    stored_length: int
    raw_length: int
    codec: int
    #: codec 3 (a piece inside a unit): the piece's offset in the decoded unit and the decoded
    #: unit's length (``offset``/``stored_length`` locate the unit's payload); else 0
    unit_offset: int = 0
    unit_length: int = 0


def entries_table(entries: Iterable[tuple[bytes, PackEntry]]) -> pa.Table:
    """``(pack_id, entry)`` pairs as a table of :func:`index_schema` (no metadata)."""
    import pyarrow as pa

    rows = list(entries)
    return pa.table(
        [
            pa.array([e.blob_id for _, e in rows], pa.binary(ID_SIZE)),
            pa.array([p for p, _ in rows], pa.binary(ID_SIZE)),
            pa.array([e.offset for _, e in rows], pa.uint64()),
            pa.array([e.stored_length for _, e in rows], pa.uint32()),
            pa.array([e.raw_length for _, e in rows], pa.uint32()),
            pa.array([e.codec for _, e in rows], pa.uint8()),
            pa.array([e.unit_offset for _, e in rows], pa.uint32()),
            pa.array([e.unit_length for _, e in rows], pa.uint32()),
        ],
        schema=index_schema().remove_metadata(),
    )


def encode_index(
    entries: Iterable[tuple[bytes, PackEntry]], version: int = 1
) -> tuple[str, bytes]:
    """Serialize ``(pack_id, entry)`` pairs as an index file of ``version`` (1 in repositories
    of versions 1–3, 2 in version 4: :func:`index_version`); return ``(object key, bytes)``."""
    import pyarrow.parquet as pq

    schema = index_schema(version)
    table = for_version(entries_table(entries), version)
    if table.schema.equals(schema, check_metadata=False):  # usual: no cast (no compute)
        table = table.replace_schema_metadata(schema.metadata)
    else:
        table = table.cast(schema)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    return f"index/{blake3(data).hexdigest()}.parquet", data


def read_index(backend: Backend, key: str) -> pa.Table:
    """Get and decode index file ``key`` (:func:`decode_index`).  Also raises
    ``IndexUnreadable`` when the object fails its authentication (an encrypted repository) or
    its bytes do not hash to its name (index files are named by their BLAKE3): damage that
    ``vmkeep repair index`` mends, as for a file that does not parse."""
    try:
        data = backend.get(key)
    except DataCorrupt as exc:
        raise IndexUnreadable(key, exc.args[-1] if exc.args else "damaged") from None
    if blake3(data).hexdigest() != key.rsplit("/", 1)[-1].removesuffix(".parquet"):
        raise IndexUnreadable(key, "its content does not match its name")
    return decode_index(data, key)


def decode_index(data: bytes, where: str) -> pa.Table:
    """Parse an index file of version 1 or 2, checking format and schema; the table is in
    :func:`index_schema` whatever the file's version (see the module docstring).  Raises
    ``IndexUnreadable`` for a damaged file (its message names ``vmkeep repair index``) and
    ``FormatError`` for an index version this vmkeep does not read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise IndexUnreadable(where, f"not Parquet: {exc}") from None
    meta = json.loads((table.schema.metadata or {}).get(b"vmkeep", b"{}"))
    if meta.get("format") != INDEX_FORMAT:
        raise IndexUnreadable(where, "not a vmkeep index")
    version = meta.get("version")
    if version not in READABLE_INDEX_VERSIONS:
        raise FormatError(where, f"unsupported index version {version}")
    if not table.schema.remove_metadata().equals(index_schema(version).remove_metadata()):
        raise IndexUnreadable(where, "unexpected index schema")
    if version == 1:
        import pyarrow.compute as pc

        if table.num_rows and pc.any(pc.greater_equal(table.column("codec"), 3)).as_py():
            raise IndexUnreadable(where, "a version-1 index lists a piece inside a unit")
        table = upgrade(table)
    else:
        _check_units(table, where)
    return table


def _check_units(table: pa.Table, where: str) -> None:
    """Bounds of the unit columns: a codec-3 row's piece lies inside its unit (at most 64 MiB);
    other rows have zeros there.  ``FormatError`` otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from vmkeep.storage.codec import CODEC_UNIT, MAX_BLOB_SIZE

    if not table.num_rows or any(table.column(c).null_count for c in UNIT_COLUMNS):
        return  # NULLs are refused where rows are used (add_table, check)
    unit = pc.equal(table.column("codec"), CODEC_UNIT)
    uoff = table.column("unit_offset").cast(pa.uint64())
    ulen = table.column("unit_length").cast(pa.uint64())
    end = pc.add(uoff, table.column("raw_length").cast(pa.uint64()))
    good_unit = pc.and_(pc.less_equal(end, ulen), pc.less_equal(ulen, MAX_BLOB_SIZE))
    good_other = pc.and_(pc.equal(uoff, 0), pc.equal(ulen, 0))
    ok = pc.if_else(unit, good_unit, good_other)
    if not pc.all(ok).as_py():
        raise IndexUnreadable(where, "an index entry's piece lies outside its unit")


def id_list(ids: pa.Array) -> list[bytes]:
    """The values of a fixed-size binary column as ``bytes`` (``to_pylist`` on the fixed-size
    type makes a scalar per value, about 10x slower than going through ``binary``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: list[bytes] = pc.cast(ids, pa.binary()).to_pylist()
    return out


def _values(column: pa.Array, itemsize: int) -> bytes:
    """The values of a non-null fixed-width integer column as native bytes of ``itemsize``."""
    import pyarrow as pa

    kind = {1: pa.uint8(), 4: pa.uint32(), 8: pa.uint64()}[itemsize]
    column = column.cast(kind)
    if len(column) == 0:
        return b""
    buf = column.buffers()[1]
    return buf.to_pybytes()[column.offset * itemsize : (column.offset + len(column)) * itemsize]


class MasterIndex:
    """All known blobs, compactly: a dict from id to row, plus parallel arrays.

    Memory is about 160 bytes per blob (8 of them the unit columns of index version 2).
    Safe for concurrent readers while one thread adds.
    """

    def __init__(self) -> None:
        self._row: dict[bytes, int] = {}
        self._packs: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        self._pack = array("I")
        self._offset = array("Q")
        self._stored = array("I")
        self._raw = array("I")
        self._codec = bytearray()
        self._unit_off = array("I")
        self._unit_len = array("I")

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._row

    def add(self, pack_id: bytes, entry: PackEntry) -> None:
        if entry.blob_id in self._row:
            return
        pack_no = self._pack_no.get(pack_id)
        if pack_no is None:
            pack_no = self._pack_no[pack_id] = len(self._packs)
            self._packs.append(pack_id)
        self._row[entry.blob_id] = len(self._offset)
        self._pack.append(pack_no)
        self._offset.append(entry.offset)
        self._stored.append(entry.stored_length)
        self._raw.append(entry.raw_length)
        self._codec.append(entry.codec)
        self._unit_off.append(entry.unit_offset)
        self._unit_len.append(entry.unit_length)

    def add_table(self, table: pa.Table) -> None:
        """Add every row of an index table (:data:`SCHEMA`), column at a time.

        Same result as :meth:`add` per row in order: the first copy of a blob wins, whether the
        earlier copy is already in the index or earlier in ``table``.  Raises ``FormatError`` on
        NULL values (a forged index).
        """
        n = table.num_rows
        if n == 0:  # a fresh repository's (cached) index: nothing to import either
            return
        import pyarrow as pa
        import pyarrow.compute as pc

        table = upgrade(table)
        cols = {name: table.column(name).combine_chunks() for name in COLUMNS}
        if any(c.null_count for c in cols.values()):
            raise FormatError("index", "NULL value in an index table")
        ids = id_list(cols["blob_id"])
        base = len(self._offset)
        fresh = dict(zip(ids, range(base, base + n), strict=True))
        if len(fresh) != n or not self._row.keys().isdisjoint(fresh):
            # duplicates (rare: concurrent writers, or a re-added table): keep first copies only
            keep, seen = [], set(self._row)
            for i, blob_id in enumerate(ids):
                if blob_id not in seen:
                    seen.add(blob_id)
                    keep.append(i)
            if len(keep) < n:
                self.add_table(table.take(pa.array(keep, pa.int64())))
                return
        packs = pc.dictionary_encode(cols["pack_id"])
        pack_nos = []
        for pack_id in id_list(packs.dictionary):
            pack_no = self._pack_no.get(pack_id)
            if pack_no is None:
                pack_no = self._pack_no[pack_id] = len(self._packs)
                self._packs.append(pack_id)
            pack_nos.append(pack_no)
        pack_col = pc.take(pa.array(pack_nos, pa.uint32()), packs.indices)
        self._pack.frombytes(_values(pack_col, self._pack.itemsize))
        self._offset.frombytes(_values(cols["offset"], self._offset.itemsize))
        self._stored.frombytes(_values(cols["stored_length"], self._stored.itemsize))
        self._raw.frombytes(_values(cols["raw_length"], self._raw.itemsize))
        self._codec += _values(cols["codec"], 1)
        self._unit_off.frombytes(_values(cols["unit_offset"], self._unit_off.itemsize))
        self._unit_len.frombytes(_values(cols["unit_length"], self._unit_len.itemsize))
        self._row.update(fresh)

    def has_many(self, blob_ids: Iterable[bytes]) -> list[bool]:
        """``[blob_id in self for blob_id in blob_ids]``, without a method call per id."""
        row = self._row
        return [b in row for b in blob_ids]

    def get(self, blob_id: bytes) -> BlobLocation | None:
        row = self._row.get(blob_id)
        if row is None:
            return None
        return BlobLocation(
            self._packs[self._pack[row]],
            self._offset[row],
            self._stored[row],
            self._raw[row],
            self._codec[row],
            self._unit_off[row],
            self._unit_len[row],
        )

    def packs(self) -> set[bytes]:
        return set(self._packs)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        for blob_id in list(self._row):
            loc = self.get(blob_id)
            if loc is not None:
                yield blob_id, loc

    def forget_packs(self, missing: set[bytes]) -> int:
        """Drop every blob stored in ``missing`` packs (a backup then re-stores them)."""
        if not missing:
            return 0
        gone = {self._pack_no[p] for p in missing if p in self._pack_no}
        doomed = [b for b, row in self._row.items() if self._pack[row] in gone]
        for blob_id in doomed:
            del self._row[blob_id]
        return len(doomed)
