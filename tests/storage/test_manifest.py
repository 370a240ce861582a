"""Restore-point manifests: round trips and forged input."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkeep.storage.codec import ZERO_ID
from vmkeep.storage.errors import FormatError
from vmkeep.storage.manifest import (
    ChunkTable,
    DiskInfo,
    RestorePoint,
    decode_point,
    encode_point,
)


def make_point(sizes: list[list[int]], zero_every: int = 3) -> RestorePoint:
    disks, chunks = [], {}
    for d, lengths in enumerate(sizes):
        table = ChunkTable()
        offset = 0
        for i, length in enumerate(lengths):
            blob = ZERO_ID if zero_every and i % zero_every == 0 else os.urandom(32)
            table.append(offset, length, blob, os.urandom(16))
            offset += length
        disks.append(DiskInfo(d, f"disk{d}", offset, 4096, "full", "test", {"key": 2000 + d}))
        chunks[d] = table
    return RestorePoint("vm1", "vm", datetime(2026, 1, 2, tzinfo=UTC), disks, chunks, meta={"a": 1})


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 1 << 20), min_size=0, max_size=40), min_size=1, max_size=3),
    st.integers(0, 4),
)
def test_roundtrip(sizes: list[list[int]], zero_every: int) -> None:
    point = make_point(sizes, zero_every)
    point_id, data = encode_point(point)
    back = decode_point(data, point_id)
    assert back.name == "vm1" and back.kind == "vm" and back.meta == {"a": 1}
    assert [d.to_json() for d in back.disks] == [d.to_json() for d in point.disks]
    for d, table in point.chunks.items():
        got = back.chunks[d]
        assert list(got.offsets) == list(table.offsets)
        assert list(got.lengths) == list(table.lengths)
        assert bytes(got.ids) == bytes(table.ids)
        assert bytes(got.fps) == bytes(table.fps)


def test_readable_with_plain_pyarrow() -> None:
    point = make_point([[4096, 4096, 100]])
    _, data = encode_point(point)
    table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    assert table.column_names == ["disk", "offset", "length", "blob_id", "xxh3"]
    meta = json.loads(table.schema.metadata[b"vmkeep"])
    assert meta["format"] == "vmkeep-restore-point" and meta["version"] == 2
    assert table.column("blob_id").null_count == 1  # the zero chunk


def _rewrite(data: bytes, mutate) -> bytes:  # type: ignore[no-untyped-def]
    table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    table = mutate(table)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_forged_manifests_are_rejected() -> None:
    point = make_point([[4096, 4096, 100]])
    pid, data = encode_point(point)
    meta = json.loads(pq.read_schema(io.BytesIO(data)).metadata[b"vmkeep"])

    def with_meta(**changes):  # type: ignore[no-untyped-def]
        m = dict(meta, **changes)
        return lambda t: t.replace_schema_metadata({b"vmkeep": json.dumps(m).encode()})

    bad_version = _rewrite(data, with_meta(version=99))
    bad_size = _rewrite(data, with_meta(disks=[dict(meta["disks"][0], size=1 << 40)]))
    no_meta = _rewrite(data, lambda t: t.replace_schema_metadata({}))
    for forged in (bad_version, bad_size, no_meta, b"not parquet at all", data[:100]):
        with pytest.raises(FormatError):
            decode_point(forged, pid)


def test_version_1_points_keep_reading() -> None:
    """Points written before version 2 (no cbt/cbt_audit/consistency keys) still decode."""
    point = make_point([[4096, 4096, 100]])
    pid, data = encode_point(point)
    meta = json.loads(pq.read_schema(io.BytesIO(data)).metadata[b"vmkeep"])
    old = _rewrite(
        data,
        lambda t: t.replace_schema_metadata(
            {b"vmkeep": json.dumps(dict(meta, version=1)).encode()}
        ),
    )
    got = decode_point(old, pid)
    assert [d.size for d in got.disks] == [d.size for d in point.disks]
    assert "cbt" not in got.disks[0].extra
