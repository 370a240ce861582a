"""MasterIndex.add_table (columnar) gives exactly what add() per row gives: first copy wins."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from vmkeep.storage.errors import FormatError
from vmkeep.storage.index import SCHEMA, MasterIndex, decode_index, encode_index, index_schema
from vmkeep.storage.pack import PackEntry


def rows(
    n: int, packs: list[bytes], ids: list[bytes] | None = None
) -> list[tuple[bytes, PackEntry]]:
    ids = ids or [os.urandom(32) for _ in range(n)]
    return [
        (packs[i % len(packs)], PackEntry(ids[i], i % 2, i * 1000 + 2**33, 100 + i, 200 + i))
        for i in range(n)
    ]


def table_of(entries: list[tuple[bytes, PackEntry]]) -> pa.Table:
    key, data = encode_index(entries)
    return decode_index(data, key)


def per_row(*tables: list[tuple[bytes, PackEntry]]) -> MasterIndex:
    index = MasterIndex()
    for entries in tables:
        for pack_id, entry in entries:
            index.add(pack_id, entry)
    return index


def same(a: MasterIndex, b: MasterIndex) -> None:
    assert len(a) == len(b)
    assert dict(a.items()) == dict(b.items())
    assert a.packs() == b.packs()


def test_add_table_matches_add() -> None:
    packs = [os.urandom(32) for _ in range(3)]
    first, second = rows(50, packs), rows(20, [*packs[1:], os.urandom(32)])
    columnar = MasterIndex()
    columnar.add_table(table_of(first))
    columnar.add_table(table_of(second))
    same(columnar, per_row(first, second))


def test_first_copy_wins_across_and_within_tables() -> None:
    p1, p2 = os.urandom(32), os.urandom(32)
    shared = [os.urandom(32) for _ in range(5)]
    a = rows(5, [p1], shared)
    dup = [*shared[:3], shared[0], os.urandom(32)]
    b = rows(5, [p2], dup)
    columnar = MasterIndex()
    columnar.add_table(table_of(a))
    columnar.add_table(table_of(b))
    same(columnar, per_row(a, b))
    assert columnar.get(shared[0]) == per_row(a).get(shared[0])
    within = MasterIndex()
    within.add_table(table_of(b))
    same(within, per_row(b))


def test_forget_packs_after_add_table() -> None:
    p1, p2 = os.urandom(32), os.urandom(32)
    entries = rows(10, [p1, p2])
    index = MasterIndex()
    index.add_table(table_of(entries))
    assert index.forget_packs({p1}) == 5
    assert all(loc.pack_id == p2 for _, loc in index.items())
    assert index.has_many([e.blob_id for _, e in entries]) == [i % 2 == 1 for i in range(10)]


def test_empty_and_null_tables() -> None:
    index = MasterIndex()
    index.add_table(SCHEMA.empty_table())
    assert len(index) == 0
    bad = pa.table(
        [pa.array([os.urandom(32)], pa.binary(32)), pa.array([os.urandom(32)], pa.binary(32)),
         pa.array([None], pa.uint64()), pa.array([1], pa.uint32()), pa.array([1], pa.uint32()),
         pa.array([0], pa.uint8())],
        schema=index_schema(1),  # six columns: add_table takes version-1 rows too
    )
    with pytest.raises(FormatError):
        index.add_table(bad)
