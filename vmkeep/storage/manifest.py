"""Restore-point manifests: Parquet files, readable with plain pyarrow or DuckDB.

Format ``vmkeep-restore-point`` version 2 (version 1 still read), stored at
``manifests/<id>.parquet`` where ``<id>`` is the hex BLAKE3 of the file's bytes.  A restore point
exists exactly when its manifest exists; it is written last, after every pack and index it
references (see :mod:`vmkeep.storage`).

Table (one row per chunk of every disk, ordered by ``disk`` then ``offset``)::

    disk     int32                  disk number (see metadata "disks")
    offset   int64                  byte offset of the chunk in the disk
    length   int32                  chunk length (the last chunk may be shorter)
    blob_id  fixed_size_binary(32)  keyed BLAKE3 of the chunk; NULL for an all-zero chunk
    xxh3     fixed_size_binary(16)  xxh3-128 of the chunk (change detection only)

Schema metadata ``b"vmkeep"`` holds a JSON object::

    {"format": "vmkeep-restore-point", "version": 2,
     "kind": "image" | "vm", "name": str, "time": ISO-8601 UTC, "parent": id | null,
     "hostname": str,
     "disks": [{"index": n, "name": str, "size": bytes, "chunk_size": bytes,
                "mode": "full" | "scan" | "cbt", "reason": str,
                "bytes_read": n, "bytes_new": n, ...source-specific keys (change_id, key...),
                # version 2, VM disks:
                "cbt": {"origin": {"by": "vmkeep" | "other", "snapshots_at_enable": bool | null,
                                   "epoch": str | null} | null,
                        "incrementals": n, "changed_ranges": [[first, end), ...] (chunks),
                        "changed_bytes": n | null, "star": "trust" | "verify" | "no" | null},
                "cbt_audit": {"result": "ok" | "mismatch" | "off" | "not applicable", "seed": n,
                              "chunks_sampled": n, "bytes_audited": n, "mismatches": n,
                              "mismatch_offsets": [...], "expected": str, ...},
                "cbt_suspect": bool}],
     "meta": {...}}   # e.g. the VM's configuration, quiesce result, warnings; version 2 VM
                      # points: "consistency": "crash" | "filesystem" | "application",
                      # "consistency_reason", "cbt_audit" (the run's audit summary)

Version 1 VM points lack the version-2 keys (readers treat them as absent) and labelled any
quiesced snapshot ``"application"``.  A VM disk's CBT keys are written and read back typed by
:class:`vmkeep.storage.read_plan.DiskCbtState`.

Every disk's chunks must tile ``[0, size)`` exactly; :func:`decode_point` checks that, the schema
and the version, so a forged manifest is rejected rather than trusted.
"""

from __future__ import annotations

import io
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from blake3 import blake3

from vmkeep.storage.codec import ID_SIZE, MAX_BLOB_SIZE, ZERO_ID
from vmkeep.storage.errors import FormatError, WrongPointKind
from vmkeep.storage.point_header import POINT_FORMAT, parse_header

#: version written for image/VM points: 2 added the per-disk ``cbt``, ``cbt_audit``,
#: ``cbt_suspect`` keys and the ``consistency`` label; version 1 points keep reading.
POINT_VERSION = 2
#: file restore points (``file_manifest.py``): 3 added zero runs in chunk lists (sparse files);
#: version 1 points keep reading.  (2 is an image version: see ``point_header.VERSIONS_BY_KIND``.)
FILE_POINT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FP_SIZE = 16
SCHEMA = pa.schema(
    [
        ("disk", pa.int32()),
        ("offset", pa.int64()),
        ("length", pa.int32()),
        ("blob_id", pa.binary(ID_SIZE)),
        ("xxh3", pa.binary(FP_SIZE)),
    ]
)


class ChunkTable:
    """The ordered chunks of one disk, stored compactly (≈ 64 bytes per chunk)."""

    def __init__(self) -> None:
        self.offsets = array("q")
        self.lengths = array("q")
        self.ids = bytearray()
        self.fps = bytearray()

    def extend_batch(self, rows: pa.RecordBatch | pa.Table) -> None:
        """Append decoded rows (columns ``offset``, ``length``, ``blob_id``, ``xxh3``; NULL ids
        are zero chunks) buffer by buffer: no Python object per row."""
        self.offsets.frombytes(_values(rows.column("offset"), pa.int64(), 8))
        self.lengths.frombytes(_values(rows.column("length"), pa.int64(), 8))
        self.ids += _fixed_values(rows.column("blob_id"), ID_SIZE, ZERO_ID)
        self.fps += _fixed_values(rows.column("xxh3"), FP_SIZE, bytes(FP_SIZE))

    def __len__(self) -> int:
        return len(self.offsets)

    def append(self, offset: int, length: int, blob_id: bytes, fp: bytes) -> None:
        self.offsets.append(offset)
        self.lengths.append(length)
        self.ids += blob_id
        self.fps += fp

    def blob_id(self, i: int) -> bytes:
        return bytes(self.ids[i * ID_SIZE : (i + 1) * ID_SIZE])

    def fp(self, i: int) -> bytes:
        return bytes(self.fps[i * FP_SIZE : (i + 1) * FP_SIZE])

    def is_zero(self, i: int) -> bool:
        return self.blob_id(i) == ZERO_ID

    @property
    def size(self) -> int:
        return self.offsets[-1] + self.lengths[-1] if self.offsets else 0

    def data_bytes(self) -> int:
        """Bytes of the chunks that are not all zero: what a thin restored disk allocates."""
        ids, zero = memoryview(self.ids), ZERO_ID
        return sum(length for i, length in enumerate(self.lengths)
                   if ids[i * ID_SIZE : (i + 1) * ID_SIZE] != zero)


@dataclass
class DiskInfo:
    index: int
    name: str
    size: int
    chunk_size: int
    mode: str = "full"
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {
            "index": self.index,
            "name": self.name,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "mode": self.mode,
            "reason": self.reason,
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DiskInfo:
        known = {"index", "name", "size", "chunk_size", "mode", "reason"}
        return cls(
            int(obj["index"]),
            str(obj["name"]),
            int(obj["size"]),
            int(obj["chunk_size"]),
            str(obj.get("mode", "full")),
            str(obj.get("reason", "")),
            {k: v for k, v in obj.items() if k not in known},
        )


@dataclass
class RestorePoint:
    name: str
    kind: str
    time: datetime
    disks: list[DiskInfo]
    chunks: dict[int, ChunkTable]
    parent: str | None = None
    hostname: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def disk_index_by_key(self) -> dict[int, int]:
        """A VM point's disks: the vSphere device key each had (its ``key`` extra) → its disk
        index in the point.  Disks without a key (image points) are left out."""
        return {int(d.extra["key"]): d.index for d in self.disks if "key" in d.extra}

    def header(self) -> dict[str, Any]:
        return {
            "format": POINT_FORMAT,
            "version": POINT_VERSION,
            "kind": self.kind,
            "name": self.name,
            "time": self.time.isoformat(),
            "parent": self.parent,
            "hostname": self.hostname,
            "disks": [d.to_json() for d in self.disks],
            "meta": self.meta,
        }


def point_key(point_id: str) -> str:
    return f"manifests/{point_id}.parquet"


def encode_point(point: RestorePoint) -> tuple[str, bytes]:
    """Serialize; returns ``(id, bytes)``.  The id is the hex BLAKE3 of the bytes."""
    columns: list[list[pa.Array]] = [[], [], [], [], []]
    for disk in point.disks:
        table = point.chunks[disk.index]
        n = len(table)
        valid = pa.array([table.blob_id(i) != ZERO_ID for i in range(n)], pa.bool_())
        zeros = n - valid.true_count  # all-zero chunks: NULL ids
        ids = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(ID_SIZE),
            n,
            [valid.buffers()[1] if zeros else None, pa.py_buffer(bytes(table.ids))],
            null_count=zeros,
        )
        columns[0].append(pa.array([disk.index] * n, pa.int32()))
        columns[1].append(pa.array(table.offsets, pa.int64()))
        columns[2].append(pa.array(table.lengths, pa.int32()))
        columns[3].append(ids)
        columns[4].append(
            pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(FP_SIZE), n, [None, pa.py_buffer(bytes(table.fps))]
            )
        )
    arrays = [pa.chunked_array(c, type=SCHEMA.field(i).type) for i, c in enumerate(columns)]
    schema = SCHEMA.with_metadata({b"vmkeep": json.dumps(point.header()).encode()})
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), sink, compression="zstd")
    data = sink.getvalue()
    return blake3(data).hexdigest(), data


def read_header(data: bytes, where: str) -> dict[str, Any]:
    """The manifest's header, validated by schema and type (:mod:`vmkeep.storage.point_header`);
    ``FormatError`` for anything that is not a vmkeep restore point of this version."""
    try:
        schema = pq.read_schema(pa.BufferReader(data))
        raw = (schema.metadata or {})[b"vmkeep"]
        loose = json.loads(raw)
    except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
        raise FormatError(where, f"unreadable manifest: {exc}") from None
    if not isinstance(loose, dict) or loose.get("format") != POINT_FORMAT:
        raise FormatError(where, "not a vmkeep restore point")
    if loose.get("version") not in READABLE_VERSIONS:
        raise FormatError(where, f"unsupported manifest version {loose.get('version')!r:.40}")
    return parse_header(raw, where)


def _single(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _values(column: pa.ChunkedArray | pa.Array, kind: pa.DataType, width: int) -> memoryview:
    """The values of a non-null integer column cast to ``kind`` (``width`` bytes), as bytes."""
    arr = _single(column).cast(kind)
    if len(arr) == 0:
        return memoryview(b"")
    return memoryview(arr.buffers()[1])[arr.offset * width : (arr.offset + len(arr)) * width]


def _fixed_values(column: pa.ChunkedArray | pa.Array, width: int, fill: bytes) -> memoryview:
    """The values of a fixed-size binary column as bytes, NULLs as ``fill``."""
    import pyarrow.compute as pc

    arr = _single(column)
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar(fill, pa.binary(width)))
    if len(arr) == 0:
        return memoryview(b"")
    return memoryview(arr.buffers()[1])[arr.offset * width : (arr.offset + len(arr)) * width]


def decode_point(data: bytes, point_id: str) -> RestorePoint:
    """Parse and validate an image or VM manifest.  Raises ``FormatError`` on anything
    unexpected, :class:`~vmkeep.storage.errors.WrongPointKind` for a file point's manifest.

    Decoded column-wise, batch by batch (:data:`BATCH_ROWS` rows): each disk's chunk table is
    filled buffer by buffer (64 bytes per chunk), never with a Python object per row, and only
    one batch of Arrow data is alive at a time — a 4-million-chunk manifest costs its chunk
    tables (256 MB) and little more."""
    import pyarrow.compute as pc

    where = point_key(point_id)
    header = read_header(data, where)
    if header["kind"] == "files":  # a sound manifest of the other kind: the caller's mistake
        raise WrongPointKind(point_id[:8], "files", "a file restore point, not an image or VM "
                             "point (browse it with `vmkeep ls`, `vmkeep mount` or `vmkeep "
                             "restore files`)")
    disks = [DiskInfo.from_json(d) for d in header["disks"]]
    by_index = {d.index: d for d in disks}
    if len(by_index) != len(disks):
        raise FormatError(where, "two disks with the same index")
    point = RestorePoint(
        name=header["name"],
        kind=header["kind"],
        time=datetime.fromisoformat(header["time"]),
        disks=disks,
        chunks={d.index: ChunkTable() for d in disks},
        parent=header.get("parent"),
        hostname=header.get("hostname", ""),
        meta=dict(header.get("meta") or {}),
        id=point_id,
    )
    ends = dict.fromkeys(by_index, 0)
    try:
        source = pq.ParquetFile(pa.BufferReader(data))
        if not source.schema_arrow.remove_metadata().equals(SCHEMA):
            raise FormatError(where, "unexpected manifest schema")
        for batch in source.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
            _check_tiling(batch, by_index, ends, where)
            disk_col = batch.column("disk")
            values = pc.unique(disk_col).to_pylist()
            for value in values:
                if value in by_index:  # rows of disks the header does not describe are ignored
                    rows = batch if len(values) == 1 else batch.filter(pc.equal(disk_col, value))
                    point.chunks[value].extend_batch(rows)
    except (pa.ArrowException, OSError) as exc:
        raise FormatError(where, f"unreadable manifest: {exc}") from None
    for disk in disks:
        if ends[disk.index] != disk.size:
            raise FormatError(
                where, f"disk {disk.index}: chunks cover {ends[disk.index]} of {disk.size}"
            )
    return point


#: Rows per batch when streaming a manifest's columns (bounded memory for huge disks).
BATCH_ROWS = 1 << 16


def iter_blob_ids(data: bytes, point_id: str) -> Iterator[pa.Array]:
    """The non-NULL ``blob_id`` values of an image/VM manifest, batch by batch (may repeat; may
    include ``ZERO_ID``).  For prune's mark phase: validates like :func:`decode_point` — header,
    schema, every disk's chunks tiling ``[0, size)`` — but reads only the ``disk``, ``offset``,
    ``length`` and ``blob_id`` columns as Arrow arrays, never as Python objects.  Raises
    ``FormatError``.  The caller checks that the bytes match ``point_id``."""
    import pyarrow.compute as pc

    where = point_key(point_id)
    header = read_header(data, where)
    try:
        disks = {d.index: d for d in (DiskInfo.from_json(d) for d in header["disks"])}
        source = pq.ParquetFile(pa.BufferReader(data))
        if not source.schema_arrow.remove_metadata().equals(SCHEMA):
            raise FormatError(where, "unexpected manifest schema")
        batches = source.iter_batches(
            batch_size=BATCH_ROWS,
            columns=["disk", "offset", "length", "blob_id"],
            use_threads=False,
        )
        ends = dict.fromkeys(disks, 0)  # where each disk's next chunk must start
        for batch in batches:
            _check_tiling(batch, disks, ends, where)
            yield pc.drop_null(batch.column("blob_id"))
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(where, f"bad manifest header: {exc}") from None
    except (pa.ArrowException, OSError) as exc:
        raise FormatError(where, f"unreadable manifest: {exc}") from None
    for disk in disks.values():
        if ends[disk.index] != disk.size:
            raise FormatError(
                where, f"disk {disk.index}: chunks cover {ends[disk.index]} of {disk.size}"
            )


def _check_tiling(
    batch: pa.RecordBatch, disks: dict[int, DiskInfo], ends: dict[int, int], where: str
) -> None:
    """:func:`_validate_tiling`, vectorized, for the rows of ``batch``; advances ``ends``.
    Rows of disks the header does not describe are ignored, as :func:`decode_point` does."""
    import pyarrow.compute as pc

    disk_col = batch.column("disk")
    for value in pc.unique(disk_col).to_pylist():
        if value not in disks:
            continue
        mask = pc.equal(disk_col, value)
        offsets = pc.filter(batch.column("offset"), mask)
        lengths = pc.filter(batch.column("length"), mask).cast(pa.int64())
        starts = pc.add(pc.subtract(pc.cumulative_sum(lengths), lengths), ends[value])
        bad = pc.or_kleene(
            pc.not_equal(offsets, starts),
            pc.or_kleene(pc.less_equal(lengths, 0), pc.greater(lengths, MAX_BLOB_SIZE)),
        )
        bad = pc.fill_null(bad, True)  # a NULL offset or length is as bad as a wrong one
        if pc.any(bad).as_py():
            at = pc.index(bad, True).as_py()
            raise FormatError(
                where, f"disk {value}: chunks do not tile at offset {offsets[at].as_py()}"
            )
        ends[value] += pc.sum(lengths).as_py() or 0
