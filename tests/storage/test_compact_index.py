"""CompactIndex (sorted flat buffers) answers exactly as MasterIndex (a dict per blob) for the
same sequence of adds, tables, merges and forgotten packs — ids ending in zero bytes included —
in a third of the memory."""

from __future__ import annotations

import os
import random

import pytest

from tests.storage.test_index_master import rows, table_of
from vmkeep.storage import compact_index
from vmkeep.storage.codec import ZERO_ID
from vmkeep.storage.compact_index import CompactIndex
from vmkeep.storage.errors import FormatError
from vmkeep.storage.index import MasterIndex
from vmkeep.storage.pack import PackEntry


def same(a: CompactIndex, b: MasterIndex, probes: list[bytes]) -> None:
    assert len(a) == len(b)
    assert dict(a.items()) == dict(b.items())
    assert a.packs() == b.packs()
    assert a.has_many(probes) == b.has_many(probes)
    assert [p in a for p in probes] == [p in b for p in probes]
    assert [a.get(p) for p in probes] == [b.get(p) for p in probes]


@pytest.mark.parametrize("merge_every", [3, 1 << 16])
def test_the_same_answers_as_the_master_index(
    merge_every: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compact_index, "MERGE_EVERY", merge_every)
    rng = random.Random(5)
    packs = [os.urandom(32) for _ in range(4)]
    tricky = [os.urandom(30) + b"\0\0", os.urandom(31) + b"\0", b"\0" * 31 + b"\1", ZERO_ID]
    ids = [os.urandom(32) for _ in range(60)] + tricky
    compact, master = CompactIndex(), MasterIndex()
    for step in range(12):
        chosen = rng.sample(ids, 12)
        entries = rows(12, packs, chosen)
        if step % 3 == 0:  # an index file (columnar), duplicates of earlier blobs included
            compact.add_table(table_of(entries))
            master.add_table(table_of(entries))
        else:  # a backup session's new blobs, one by one
            for pack_id, entry in entries:
                compact.add(pack_id, entry)
                master.add(pack_id, entry)
        same(compact, master, [*ids, os.urandom(32)])
    assert compact.forget_packs({packs[0]}) == master.forget_packs({packs[0]})
    same(compact, master, ids)
    compact.add(packs[1], PackEntry(tricky[0], 1, 9, 9, 9))
    master.add(packs[1], PackEntry(tricky[0], 1, 9, 9, 9))
    same(compact, master, ids)


def test_null_values_are_refused() -> None:
    import pyarrow as pa

    table = table_of(rows(3, [os.urandom(32)]))
    bad = table.set_column(2, "offset", pa.array([1, None, 3], pa.uint64()))
    with pytest.raises(FormatError):
        CompactIndex().add_table(bad)
    assert len(CompactIndex()) == 0 and CompactIndex().has_many([]) == []


def test_a_third_of_the_memory() -> None:
    index = CompactIndex()
    index.add_table(table_of(rows(20_000, [os.urandom(32) for _ in range(30)])))
    assert len(index) == 20_000
    assert index.nbytes() == 20_000 * (32 + 4 + 8 + 4 + 4 + 1 + 4 + 4)  # + unit columns
