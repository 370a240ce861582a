"""File restore points: the Parquet manifest of a file-level backup (kind ``"files"``).

Format ``vmkeep-restore-point`` version 3, kind ``files``, stored like image points at
``manifests/<id>.parquet`` where ``<id>`` is the hex BLAKE3 of the file's bytes; written last,
after every pack and index it references.  ``Repository.list_points()`` lists it beside image
points (it reads only the header).

Table: one row per file-system entry, parents before children (rows sorted by path components)::

    path        binary        "/" for the source root, else "/a/b": the names exactly as the
                              source returned them (bytes; UTF-8 for remote sources), joined by "/"
    type        string        file | dir | symlink | fifo | chr | blk | sock
    mode        uint32        st_mode permission bits (07777); NULL when the source has none
    uid, gid    int64         NULL when the source has none
    owner, group string       user and group names, NULL when unknown
    mtime_ns    int64         modification time, ns since the epoch (UTC)
    ctime_ns    int64         status-change time (change detection only), NULL when unknown
    inode, dev  uint64        NULL when unknown (change detection, hard links)
    nlink       uint32        link count (1 when unknown)
    size        int64         bytes of a file; 0 otherwise
    link        binary        symlink target, verbatim (never resolved); NULL otherwise
    hardlink    int64         row number of the first row of the same (dev, inode) when
                              nlink > 1; NULL otherwise (the first row of a group points to itself)
    rdev        uint64        device number of chr/blk entries; NULL otherwise
    xattrs      list<struct<name: binary, value: binary>>  NULL when the source exposes none
    chunks      list<fixed_size_binary(32)>  keyed BLAKE3 ids of the content's chunks, in order;
                              ``ZERO_ID`` (32 zero bytes) is a zero run: that many zero bytes,
                              stored nowhere (a hole of a sparse file; version 3)
    chunk_lengths list<int32> lengths of those chunks (sum = size): a stored chunk at most
                              ``MAX_BLOB_SIZE``, a zero run at most :data:`ZERO_RUN_MAX`

Schema metadata ``b"vmkeep"`` holds a JSON object::

    {"format": "vmkeep-restore-point", "version": 3, "kind": "files",
     "name": str, "time": ISO-8601 UTC, "parent": id | null, "hostname": str,
     "source": str (URL or path, without credentials), "client": str,
     "disks": [],                       # always empty: keeps image-point readers working
     "stats": {"files": n, "dirs": n, "bytes": n, "bytes_read": n, "bytes_new": n, ...},
     "meta": {"source": ..., "client": ..., "stats": ..., "warnings": [...]}}

:func:`decode_file_point` checks the header, the schema, and every row (paths well formed and
unique, every parent an earlier directory, chunk lists that add up to the size, hard-link groups
in range), so a forged manifest is rejected rather than trusted.  Names are *not* judged safe for
the host here: restoring checks each one (see :mod:`vmkeep.disks.safe_restore`).

Versions: 1 (before zero runs) and 3 are read; 3 is written.  Version 3 differs only in the
zero runs, so a reader of version 1 points needs nothing else; the number skips 2 because older
readers accept 2 (an image-point version) and would take a zero run for a missing chunk.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from blake3 import blake3

from vmkeep.storage.codec import ID_SIZE, MAX_BLOB_SIZE, ZERO_ID
from vmkeep.storage.errors import (
    FormatError,
    WrongPointKind,
)
from vmkeep.storage.manifest import FILE_POINT_VERSION as POINT_VERSION
from vmkeep.storage.manifest import POINT_FORMAT, RestorePoint, decode_point, point_key, read_header
from vmkeep.storage.repository import Repository

KIND = "files"
#: The longest zero run one chunk-list entry holds (a longer hole takes several entries).
ZERO_RUN_MAX = 1 << 30
TYPES = frozenset({"file", "dir", "symlink", "fifo", "chr", "blk", "sock"})
XATTR = pa.struct([("name", pa.binary()), ("value", pa.binary())])
SCHEMA = pa.schema(
    [
        ("path", pa.binary()),
        ("type", pa.string()),
        ("mode", pa.uint32()),
        ("uid", pa.int64()),
        ("gid", pa.int64()),
        ("owner", pa.string()),
        ("group", pa.string()),
        ("mtime_ns", pa.int64()),
        ("ctime_ns", pa.int64()),
        ("inode", pa.uint64()),
        ("dev", pa.uint64()),
        ("nlink", pa.uint32()),
        ("size", pa.int64()),
        ("link", pa.binary()),
        ("hardlink", pa.int64()),
        ("rdev", pa.uint64()),
        ("xattrs", pa.list_(XATTR)),
        ("chunks", pa.list_(pa.binary(ID_SIZE))),
        ("chunk_lengths", pa.list_(pa.int32())),
    ]
)
#: The per-entry scalar columns, in schema order (also :class:`FileEntry`'s first fields).
SCALAR_FIELDS = [f.name for f in SCHEMA if f.name not in ("xattrs", "chunks", "chunk_lengths")]
_SCALARS = SCALAR_FIELDS


@dataclass(slots=True)
class FileEntry:
    """One file-system entry of a file restore point (see the module docstring for fields)."""

    path: bytes
    type: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    owner: str | None = None
    group: str | None = None
    mtime_ns: int = 0
    ctime_ns: int | None = None
    inode: int | None = None
    dev: int | None = None
    nlink: int = 1
    size: int = 0
    link: bytes | None = None
    hardlink: int | None = None
    rdev: int | None = None
    xattrs: list[tuple[bytes, bytes]] | None = None
    chunk_ids: bytes = b""  # the chunk ids concatenated, 32 bytes each
    chunk_lengths: list[int] = field(default_factory=list)

    @property
    def name(self) -> bytes:
        return self.path.rsplit(b"/", 1)[-1]

    def chunks(self) -> list[bytes]:
        ids = self.chunk_ids
        return [ids[i : i + ID_SIZE] for i in range(0, len(ids), ID_SIZE)]


class FilePoint:
    """A file restore point: header fields plus its entries in path order.

    The entries are held either as a pyarrow :attr:`table` (in :data:`SCHEMA`, what decoding and
    the data path produce; cheap) or as a list of :class:`FileEntry` (:attr:`entries`; built on
    first use from the table, or given by the caller).  Each form is derived from the other on
    demand, so callers may use either; a point decoded from the repository is validated once.
    """

    kind = KIND  # as :attr:`RestorePoint.kind <vmkeep.storage.manifest.RestorePoint.kind>`

    def __init__(
        self,
        name: str,
        time: datetime,
        entries: list[FileEntry] | None = None,
        source: str = "",
        client: str = "",
        parent: str | None = None,
        hostname: str = "",
        stats: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        id: str = "",
        *,
        table: pa.Table | None = None,
    ) -> None:
        self.name, self.time, self.source, self.client = name, time, source, client
        self.parent, self.hostname, self.id = parent, hostname, id
        self.stats: dict[str, Any] = stats if stats is not None else {}
        self.meta: dict[str, Any] = meta if meta is not None else {}
        self._entries = entries
        self._table = table if table is not None or entries is not None else entries_table([])

    def __repr__(self) -> str:
        return f"FilePoint({self.name!r}, {self.short_id or '-'}, {len(self)} entries)"

    def __len__(self) -> int:
        return self._table.num_rows if self._table is not None else len(self.entries)

    @property
    def entries(self) -> list[FileEntry]:
        """The rows as :class:`FileEntry` objects (materialized from :attr:`table` once)."""
        if self._entries is None:
            assert self._table is not None
            self._entries = table_entries(self._table)
        return self._entries

    @entries.setter
    def entries(self, value: list[FileEntry]) -> None:
        self._entries, self._table = value, None

    @property
    def table(self) -> pa.Table:
        """The rows as a pyarrow table in :data:`SCHEMA` (built from :attr:`entries` once)."""
        if self._table is None:
            self._table = entries_table(self.entries)
        return self._table

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def header(self) -> dict[str, Any]:
        meta = {"source": self.source, "client": self.client, "stats": self.stats, **self.meta}
        return {
            "format": POINT_FORMAT,
            "version": POINT_VERSION,
            "kind": KIND,
            "name": self.name,
            "time": self.time.isoformat(),
            "parent": self.parent,
            "hostname": self.hostname,
            "source": self.source,
            "client": self.client,
            "disks": [],
            "stats": self.stats,
            "meta": meta,
        }


def sort_key(path: bytes) -> tuple[bytes, ...]:
    """Rows are ordered by path components: parents first, siblings by name bytes."""
    return tuple(path.split(b"/")[1:]) if path != b"/" else ()


def chunk_list_array(flat: bytes, counts: list[int]) -> pa.ListArray:
    """A ``chunks`` column: ``counts[i]`` ids for row ``i``, taken in order from ``flat``."""
    offsets = [0]
    total = 0
    for n in counts:
        total += n
        offsets.append(total)
    values = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(ID_SIZE), total, [None, pa.py_buffer(flat)]
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def entries_table(entries: list[FileEntry]) -> pa.Table:
    """The :data:`SCHEMA` table of ``entries`` (kept in their order)."""
    arrays = [
        pa.array([getattr(e, name) for e in entries], SCHEMA.field(name).type)
        for name in _SCALARS
    ]
    xattrs = [
        None if e.xattrs is None else [{"name": k, "value": v} for k, v in e.xattrs]
        for e in entries
    ]
    arrays.append(pa.array(xattrs, SCHEMA.field("xattrs").type))
    ids = b"".join(e.chunk_ids for e in entries)
    arrays.append(chunk_list_array(ids, [len(e.chunk_ids) // ID_SIZE for e in entries]))
    arrays.append(pa.array([e.chunk_lengths for e in entries], pa.list_(pa.int32())))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def encode_file_point(point: FilePoint) -> tuple[str, bytes]:
    """Serialize (rows must be in :func:`sort_key` order); returns ``(id, bytes)``."""
    schema = SCHEMA.with_metadata({b"vmkeep": json.dumps(point.header()).encode()})
    table = point.table.cast(SCHEMA).replace_schema_metadata(schema.metadata)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 20)
    data = sink.getvalue()
    return blake3(data).hexdigest(), data


def decode_file_point(data: bytes, point_id: str) -> FilePoint:
    """Parse and validate a file manifest.  Raises ``FormatError`` on anything unexpected,
    :class:`~vmkeep.storage.errors.WrongPointKind` for a sound manifest of another kind."""
    where = point_key(point_id)
    header = read_header(data, where)
    if header.get("kind") != KIND:  # a sound manifest of the other kind: the caller's mistake
        raise WrongPointKind(point_id[:8], header["kind"], "not a file restore point (its guest "
                             "files are read with `vmkeep ls POINT:PATH`, `vmkeep mount` or "
                             "`vmkeep restore files POINT:PATH`)")
    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise FormatError(where, f"unreadable manifest: {exc}") from None
    if not table.schema.remove_metadata().equals(SCHEMA):
        raise FormatError(where, "unexpected file manifest schema")
    table = table.replace_schema_metadata(None).combine_chunks()
    validate_table(table, where)
    try:
        return FilePoint(
            name=str(header["name"]),
            time=datetime.fromisoformat(header["time"]),
            source=str(header.get("source", "")),
            client=str(header.get("client", "")),
            parent=header.get("parent"),
            hostname=str(header.get("hostname", "")),
            stats=dict(header.get("stats") or {}),
            meta={k: v for k, v in (header.get("meta") or {}).items()
                  if k not in ("source", "client", "stats")},
            id=point_id,
            table=table,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(where, f"bad manifest header: {exc}") from None


def table_entries(table: pa.Table) -> list[FileEntry]:
    """The rows of a (validated) :data:`SCHEMA` table as :class:`FileEntry` objects."""
    scalars = [table.column(name).to_pylist() for name in _SCALARS]
    xattrs = table.column("xattrs").to_pylist()
    chunks = table.column("chunks").combine_chunks()
    lengths = table.column("chunk_lengths").combine_chunks()
    ids_flat = chunks.flatten()
    raw = _fixed_bytes(ids_flat)
    id_offsets = _rel_offsets(chunks).to_pylist()
    len_values = lengths.flatten().to_pylist()
    len_offsets = _rel_offsets(lengths).to_pylist()
    entries = []
    for i, row in enumerate(zip(*scalars, strict=True)):
        entry = FileEntry(*row)
        a, b = id_offsets[i], id_offsets[i + 1]
        entry.chunk_ids = raw[a * ID_SIZE : b * ID_SIZE]
        entry.chunk_lengths = len_values[len_offsets[i] : len_offsets[i + 1]]
        x = xattrs[i]
        if x is not None:
            entry.xattrs = [(d["name"], d["value"]) for d in x]
        entries.append(entry)
    return entries


def _fixed_bytes(values: pa.Array) -> bytes:
    """The concatenated values of a (non-null) fixed-size binary array."""
    if not len(values):
        return b""
    width = values.type.byte_width
    buf = values.buffers()[1]
    return buf.to_pybytes()[values.offset * width : (values.offset + len(values)) * width]


def _rel_offsets(lists: pa.ListArray) -> pa.Array:
    """List offsets relative to ``lists.flatten()`` (``n + 1`` values)."""
    offsets = lists.offsets
    if len(offsets) and offsets[0].as_py():
        offsets = pc.subtract(offsets, offsets[0])
    return offsets


def validate_entries(entries: list[FileEntry], where: str) -> None:
    """Check the invariants listed in the module docstring; raise ``FormatError``."""
    validate_table(entries_table(entries), where)


def _first(mask: pa.Array) -> int:
    """Index of the first true value of a boolean array (nulls count as true), or -1."""
    return int(pc.index(pc.fill_null(mask, True), True).as_py())


def _fail(where: str, mask: pa.Array, what: str) -> None:
    row = _first(mask)
    if row >= 0:
        raise FormatError(where, f"row {row}: {what}")


def validate_table(table: pa.Table, where: str) -> None:
    """Check the invariants of the module docstring, column at a time; raise ``FormatError``.

    Rows must be strictly increasing in :func:`sort_key` order (so paths are unique and the root
    comes first), every path well formed, every parent an earlier directory, chunk lists only on
    files and adding up to their size, hard-link groups pointing back to a row of the same type.
    """
    n = table.num_rows
    if n == 0:
        return
    col = {name: table.column(name).combine_chunks() for name in SCHEMA.names}
    path, kind = col["path"], col["type"]
    for name in ("path", "type", "size", "nlink", "mtime_ns"):
        _fail(where, pc.is_null(col[name]), f"{name} is NULL")
    _fail(where, pc.invert(pc.is_in(kind, value_set=pa.array(sorted(TYPES)))), "bad type")
    bad = pc.or_(pc.invert(pc.starts_with(path, "/")), pc.match_substring(path, "\0"))
    for part in ("//", "/./", "/../"):
        bad = pc.or_(bad, pc.match_substring(path, part))
    for tail in ("/.", "/.."):
        bad = pc.or_(bad, pc.ends_with(path, tail))
    bad = pc.or_(bad, pc.and_(pc.ends_with(path, "/"), pc.not_equal(path, b"/")))
    _fail(where, bad, "bad path")
    if path[0].as_py() != b"/":
        raise FormatError(where, "the first row must be the root directory")
    # "/" sorts below every name byte when mapped to NUL (never in a name): byte order of the
    # mapped paths is then sort_key order, and strictly increasing means unique too.
    key = pc.replace_substring(path, "/", "\0")
    ordered = pc.less(key.slice(0, n - 1), key.slice(1))
    _fail(where, pc.invert(ordered), "out of path order or duplicate path")
    paths = path.to_pylist()
    parents = pa.array([p[: p.rfind(b"/")] or b"/" for p in paths[1:]], pa.binary())
    prow = pc.index_in(parents, value_set=path)
    ptype = pc.take(kind, prow)
    # prow < own row follows from the order check (a parent is a prefix, so it sorts first)
    _fail(where, pc.not_equal(ptype, "dir"), "parent is not an earlier directory")
    chunks, lengths = col["chunks"], col["chunk_lengths"]
    if chunks.null_count or lengths.null_count:
        raise FormatError(where, "NULL chunk list")
    nids, nlen = pc.list_value_length(chunks), pc.list_value_length(lengths)
    is_file = pc.equal(kind, "file")
    mismatch = pc.or_(pc.not_equal(nids, nlen), pc.and_(pc.greater(nlen, 0), pc.invert(is_file)))
    _fail(where, mismatch, "chunk lists do not match")
    flat = lengths.flatten()
    if len(flat):
        if flat.null_count:
            raise FormatError(where, "NULL chunk length")
        zero_run = pc.equal(chunks.flatten(), pa.scalar(ZERO_ID, pa.binary(ID_SIZE)))
        limit = pc.if_else(zero_run, ZERO_RUN_MAX, MAX_BLOB_SIZE)
        implausible = pc.or_(pc.less_equal(flat, 0), pc.greater(flat, limit))
        at = _first(implausible)
        if at >= 0:
            row = pc.list_parent_indices(lengths)[at].as_py()
            raise FormatError(where, f"row {row}: implausible chunk length")
    cum = pa.concat_arrays([pa.array([0], pa.int64()),
                            pc.cumulative_sum(pc.cast(flat, pa.int64()))])
    offsets = _rel_offsets(lengths)
    sums = pc.subtract(pc.take(cum, offsets.slice(1)), pc.take(cum, offsets.slice(0, n)))
    short = pc.and_(is_file, pc.not_equal(sums, col["size"]))
    row = _first(short)
    if row >= 0:
        raise FormatError(
            where, f"row {row}: chunks cover {sums[row].as_py()} of {col['size'][row].as_py()}"
        )
    link = col["hardlink"]
    if link.null_count < n:
        rows = pa.array(range(n), pa.int64())
        out = pc.or_(pc.less(link, 0), pc.greater(link, rows))
        _fail(where, pc.fill_null(out, False), "hard-link group out of range")
        lead = pc.take(kind, link)
        _fail(where, pc.fill_null(pc.not_equal(lead, kind), False), "hard-link group out of range")


def save_file_point(repo: Repository, point: FilePoint) -> str:
    """Publish a file restore point (one atomic put).  Call only after its session committed."""
    point_id, data = encode_file_point(point)
    repo.backend.put(point_key(point_id), data)
    point.id = point_id
    repo.known.update(repo.config_hash, add=[point_id])  # rollback detection covers it at once
    return point_id


def load_file_point(repo: Repository, ref: str) -> FilePoint:
    """Resolve ``ref`` (id, prefix, ``NAME@latest``), fetch, authenticate and decode it;
    ``WrongPointKind`` for an image or VM point."""
    point_id, data = repo.manifest_data(ref)
    return decode_file_point(data, point_id)


def load_any_point(repo: Repository, ref: str) -> RestorePoint | FilePoint:
    """Restore point ``ref`` whatever its kind (its header says which decoder reads it),
    fetched once: for the commands that serve image, VM and file points alike."""
    point_id, data = repo.manifest_data(ref)
    if read_header(data, point_key(point_id))["kind"] == KIND:
        return decode_file_point(data, point_id)
    return decode_point(data, point_id)


def latest_file_point(repo: Repository, name: str) -> FilePoint | None:
    """The newest file restore point called ``name``, or ``None``."""
    points = [p for p in repo.list_points(name) if p.kind == KIND]
    return load_file_point(repo, points[-1].id) if points else None
