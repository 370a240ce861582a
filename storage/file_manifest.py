"""File restore points: the Parquet manifest of a file-level backup (kind ``"files"``).

Format ``vmkeep-restore-point`` version 1, kind ``files``, stored like image points at
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
    chunks      list<fixed_size_binary(32)>  keyed BLAKE3 ids of the content's chunks, in order
    chunk_lengths list<int32> lengths of those chunks (sum = size)

Schema metadata ``b"vmkeep"`` holds a JSON object::

    {"format": "vmkeep-restore-point", "version": 1, "kind": "files",
     "name": str, "time": ISO-8601 UTC, "parent": id | null, "hostname": str,
     "source": str (URL or path, without credentials), "client": str,
     "disks": [],                       # always empty: keeps image-point readers working
     "stats": {"files": n, "dirs": n, "bytes": n, "bytes_read": n, "bytes_new": n, ...},
     "meta": {"source": ..., "client": ..., "stats": ..., "warnings": [...]}}

:func:`decode_file_point` checks the header, the schema, and every row (paths well formed and
unique, every parent an earlier directory, chunk lists that add up to the size, hard-link groups
in range), so a forged manifest is rejected rather than trusted.  Names are *not* judged safe for
the host here: restoring checks each one (see :mod:`vmkeep.disks.safe_restore`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from blake3 import blake3

from vmkeep.storage.codec import ID_SIZE, MAX_BLOB_SIZE
from vmkeep.storage.errors import DataCorrupt, FormatError, ObjectNotFound, PointNotFound
from vmkeep.storage.manifest import POINT_FORMAT, POINT_VERSION, point_key, read_header
from vmkeep.storage.repository import Repository

KIND = "files"
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
_SCALARS = [f.name for f in SCHEMA if f.name not in ("xattrs", "chunks", "chunk_lengths")]


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


@dataclass
class FilePoint:
    """A decoded file restore point: header fields plus its entries in path order."""

    name: str
    time: datetime
    entries: list[FileEntry]
    source: str = ""
    client: str = ""
    parent: str | None = None
    hostname: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    id: str = ""

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


def _list_column(flat: bytes, counts: list[int], value_type: pa.DataType) -> pa.Array:
    offsets = [0]
    for n in counts:
        offsets.append(offsets[-1] + n)
    if value_type == pa.binary(ID_SIZE):
        values: pa.Array = pa.FixedSizeBinaryArray.from_buffers(
            value_type, offsets[-1], [None, pa.py_buffer(flat)]
        )
    else:
        raise TypeError(value_type)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def encode_file_point(point: FilePoint) -> tuple[str, bytes]:
    """Serialize (entries must be in :func:`sort_key` order); returns ``(id, bytes)``."""
    entries = point.entries
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
    arrays.append(_list_column(ids, [len(e.chunk_ids) // ID_SIZE for e in entries], pa.binary(32)))
    arrays.append(pa.array([e.chunk_lengths for e in entries], pa.list_(pa.int32())))
    schema = SCHEMA.with_metadata({b"vmkeep": json.dumps(point.header()).encode()})
    sink = io.BytesIO()
    table = pa.Table.from_arrays(arrays, schema=schema)
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 20)
    data = sink.getvalue()
    return blake3(data).hexdigest(), data


def decode_file_point(data: bytes, point_id: str) -> FilePoint:
    """Parse and validate a file manifest.  Raises ``FormatError`` on anything unexpected."""
    where = point_key(point_id)
    header = read_header(data, where)
    if header.get("kind") != KIND:
        raise FormatError(where, f"not a file restore point (kind {header.get('kind')!r})")
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise FormatError(where, f"unreadable manifest: {exc}") from None
    if not table.schema.remove_metadata().equals(SCHEMA):
        raise FormatError(where, "unexpected file manifest schema")
    try:
        point = FilePoint(
            name=str(header["name"]),
            time=datetime.fromisoformat(header["time"]),
            entries=[],
            source=str(header.get("source", "")),
            client=str(header.get("client", "")),
            parent=header.get("parent"),
            hostname=str(header.get("hostname", "")),
            stats=dict(header.get("stats") or {}),
            meta={k: v for k, v in (header.get("meta") or {}).items()
                  if k not in ("source", "client", "stats")},
            id=point_id,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(where, f"bad manifest header: {exc}") from None
    point.entries = _rows(table, where)
    validate_entries(point.entries, where)
    return point


def _rows(table: pa.Table, where: str) -> list[FileEntry]:
    scalars = [table.column(name).to_pylist() for name in _SCALARS]
    xattrs = table.column("xattrs").to_pylist()
    chunks = table.column("chunks").combine_chunks()
    lengths = table.column("chunk_lengths").combine_chunks()
    if chunks.null_count or lengths.null_count:
        raise FormatError(where, "NULL chunk list")
    ids_flat = chunks.values
    raw = bytes(ids_flat.buffers()[1])[ids_flat.offset * ID_SIZE :] if len(ids_flat) else b""
    id_offsets = chunks.offsets.to_pylist()
    len_values = lengths.values.to_pylist()
    len_offsets = lengths.offsets.to_pylist()
    entries = []
    for i, row in enumerate(zip(*scalars, strict=True)):
        entry = FileEntry(*row)
        a, b = id_offsets[i], id_offsets[i + 1]
        entry.chunk_ids = raw[a * ID_SIZE : b * ID_SIZE]
        entry.chunk_lengths = len_values[len_offsets[i] : len_offsets[i + 1]]
        x = xattrs[i]
        entry.xattrs = None if x is None else [(d["name"], d["value"]) for d in x]
        entries.append(entry)
    return entries


def validate_entries(entries: list[FileEntry], where: str) -> None:
    """Check the invariants listed in the module docstring; raise ``FormatError``."""
    kinds: dict[bytes, str] = {}
    for i, e in enumerate(entries):
        p = e.path
        q = p + b"/"
        bad = (
            p[:1] != b"/"
            or (p != b"/" and (p.endswith(b"/") or b"//" in p or b"/./" in q or b"/../" in q))
            or b"\0" in p
        )
        if bad or p in kinds or e.type not in TYPES:
            raise FormatError(where, f"row {i}: bad or duplicate path or type")
        if p != b"/" and kinds.get(p[: p.rindex(b"/")] or b"/") != "dir":
            raise FormatError(where, f"row {i}: parent is not an earlier directory")
        kinds[p] = e.type
        lengths = e.chunk_lengths
        if lengths or e.chunk_ids:
            if len(e.chunk_ids) != ID_SIZE * len(lengths) or e.type != "file":
                raise FormatError(where, f"row {i}: chunk lists do not match")
            if min(lengths) <= 0 or max(lengths) > MAX_BLOB_SIZE:
                raise FormatError(where, f"row {i}: implausible chunk length")
        if e.type == "file" and sum(lengths) != e.size:
            raise FormatError(where, f"row {i}: chunks cover {sum(lengths)} of {e.size}")
        h = e.hardlink
        if h is not None and not (0 <= h <= i and entries[h].type == e.type):
            raise FormatError(where, f"row {i}: hard-link group out of range")
    if entries and entries[0].path != b"/":
        raise FormatError(where, "the first row must be the root directory")


def save_file_point(repo: Repository, point: FilePoint) -> str:
    """Publish a file restore point (one atomic put).  Call only after its session committed."""
    point_id, data = encode_file_point(point)
    repo.backend.put(point_key(point_id), data)
    point.id = point_id
    return point_id


def load_file_point(repo: Repository, ref: str) -> FilePoint:
    """Resolve ``ref`` (id, prefix, ``NAME@latest``), fetch, authenticate and decode it."""
    point_id = repo.resolve(ref)
    key = point_key(point_id)
    try:
        data = repo.backend.get(key)
    except ObjectNotFound:
        raise PointNotFound(ref) from None
    if blake3(data).hexdigest() != point_id:
        raise DataCorrupt(key, "manifest content does not match its name")
    return decode_file_point(data, point_id)


def latest_file_point(repo: Repository, name: str) -> FilePoint | None:
    """The newest file restore point called ``name``, or ``None``."""
    points = [p for p in repo.list_points(name) if p.kind == KIND]
    return load_file_point(repo, points[-1].id) if points else None
