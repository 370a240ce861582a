"""Grain tables and directories of sparse deltas (pure logic): :mod:`vmkeep.disks.vmdk.grains`
against a per-entry reference decoder written from qemu's ``block/vmdk.c``, and whole delta
chains crafted by the writers of ``test_vsphere_deltas`` read back through :func:`open_chain`
from memory (any grain size, every SESparse grain type)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_profile import SUPPRESSED
from tests.vsphere.test_vsphere_deltas import (
    SES_UNMAPPED,
    SES_ZERO,
    compose,
    cowd,
    descriptor,
    sesparse,
)
from vmkeep.disks.vmdk.deltas import open_chain
from vmkeep.disks.vmdk.descriptor import parse_descriptor
from vmkeep.disks.vmdk.grains import (
    PARENT,
    ZEROS,
    CorruptTable,
    GrainRuns,
    cowd_wheres,
    sesparse_wheres,
)

S = 512


# -- reference: one entry at a time, as qemu's get_cluster_offset -------------------------------
def ref_sesparse(entry: int, grains_offset: int, gs: int) -> int:
    kind = entry >> 60
    if kind == 0:
        assert entry == 0
        return PARENT
    if kind in (1, 2):
        return ZEROS
    assert kind == 3
    cluster = ((entry & 0x0FFF000000000000) >> 48) | ((entry & 0x0000FFFFFFFFFFFF) << 12)
    return grains_offset + cluster * gs


def expand(runs: GrainRuns) -> list[int]:
    """Per-grain where-values of a table, from its runs (first sector of each grain)."""
    out: list[int] = []
    for i in range(runs.size):
        [(n, where)] = runs.spans(i, 0, runs.grain)
        assert n == runs.grain
        out.append(where)
    return out


# a table's entries: runs of parent / zeros / consecutive data, like real deltas hold
def _cowd_runs(gs: int) -> st.SearchStrategy[list[int]]:
    piece = st.tuples(st.sampled_from(["parent", "data"]), st.integers(1, 300),
                      st.integers(1, 1 << 20))
    def build(pieces: list[tuple[str, int, int]]) -> list[int]:
        out: list[int] = []
        for kind, n, start in pieces:
            out += [0] * n if kind == "parent" else [start + k * gs for k in range(n)]
        return (out + [0] * 4096)[:4096]
    return st.lists(piece, max_size=30).map(build)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), gs=st.sampled_from([1, 8, 128]))
def test_cowd_table_runs_equal_the_entries(data: st.DataObject, gs: int) -> None:
    entries = data.draw(_cowd_runs(gs))
    runs = GrainRuns.from_wheres(cowd_wheres(struct.pack("<4096I", *entries)), gs)
    assert expand(runs) == entries
    # runs are maximal: neighbours never continue each other
    assert len(runs.starts) == len(set(runs.starts)) and runs.starts[0] == 0
    first = data.draw(st.integers(0, 4095))
    within = data.draw(st.integers(0, gs - 1))
    count = data.draw(st.integers(1, 4096 * gs))
    pieces = runs.spans(first, within, count)
    assert sum(n for n, _ in pieces) == min(count, 4096 * gs - first * gs - within)
    at = first * gs + within
    for n, where in pieces:  # every sector of a piece agrees with the entry of its grain
        for k in (0, n - 1):
            g, w = divmod(at + k, gs)
            want = entries[g] + w if entries[g] else 0
            assert (where + k if where > 0 else where) == want
        at += n
    held = [(s, n) for s, n in runs.held()]
    assert sum(n for _, n in held) == sum(1 for e in entries if e)


def _ses_entries() -> st.SearchStrategy[list[int]]:
    def entry(kind_cluster: tuple[int, int]) -> int:
        kind, c = kind_cluster
        if kind == 3:
            return (3 << 60) | ((c & 0xFFF) << 48) | (c >> 12)
        return kind << 60
    one = st.tuples(st.sampled_from([0, 1, 2, 3]), st.integers(0, (1 << 40) - 1)).map(entry)
    seq = st.tuples(st.integers(0, 1 << 30), st.integers(1, 200)).map(
        lambda t: [entry((3, t[0] + k)) for k in range(t[1])]
    )
    return st.lists(st.one_of(one.map(lambda e: [e]), seq), max_size=60).map(
        lambda parts: ([e for p in parts for e in p] + [0] * 4096)[:4096]
    )


@settings(max_examples=60, deadline=None)
@given(entries=_ses_entries(), grains_offset=st.integers(1, 1 << 20))
def test_sesparse_table_decodes_like_qemu(entries: list[int], grains_offset: int) -> None:
    wheres = sesparse_wheres(struct.pack("<4096Q", *entries), grains_offset, 8)
    assert wheres.to_pylist() == [ref_sesparse(e, grains_offset, 8) for e in entries]
    runs = GrainRuns.from_wheres(wheres, 8)
    assert expand(runs) == wheres.to_pylist()
    # unmapped (1) and zero (2) grains are held by the layer: they hide the parent
    assert sum(n for _, n in runs.held()) == sum(1 for e in entries if e)


@pytest.mark.parametrize(
    "entry, match",
    [((4 << 60) | 5, "grain type 4"), ((15 << 60), "grain type 15"), (7, "non-zero payload")],
)
def test_corrupt_sesparse_entries_are_refused(entry: int, match: str) -> None:
    entries = [0] * 4096
    entries[77] = entry
    with pytest.raises(CorruptTable, match=match):
        sesparse_wheres(struct.pack("<4096Q", *entries), 100, 8)


# -- whole chains from memory ---------------------------------------------------------------
class Mem:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length].ljust(length, b"\0")


def read_chain(files: dict[str, bytes], top: str, capacity: int) -> bytes:
    def open_file(rel: str) -> tuple[Mem, int]:
        return Mem(files[rel]), len(files[rel])

    def open_flat(d: object) -> Mem:
        return Mem(files["vm/vm-flat.vmdk"])

    chain = open_chain(f"[ds1] {top}", top, files[top], capacity, open_file, open_flat)
    try:
        return chain.pread(0, capacity)
    finally:
        chain.close()


CAP = 20 * 1024 * 1024  # two SESparse tables, several COWD tables at 512-byte grains


@settings(max_examples=15, deadline=None, suppress_health_check=SUPPRESSED)
@given(
    cowd_gs=st.sampled_from([1, 8, 128]),
    written=st.dictionaries(st.integers(0, CAP // S - 1), st.binary(min_size=1, max_size=S),
                            max_size=40),
    top=st.dictionaries(st.integers(0, CAP // 4096 - 1),
                        st.one_of(st.sampled_from([SES_ZERO, SES_UNMAPPED]),
                                  st.binary(min_size=4096, max_size=4096)),
                        max_size=40),
)
def test_chain_round_trip(cowd_gs: int, written: dict[int, bytes],
                          top: dict[int, bytes | int]) -> None:
    base = bytes(range(256)) * (CAP // 256)
    gb = cowd_gs * S
    mid = {s * S // gb: v.ljust(gb, b"\x01") for s, v in written.items()}
    files = {
        "vm/vm.vmdk": descriptor("VMFS", "vm-flat.vmdk", CAP // S, cid="0000000a"),
        "vm/vm-flat.vmdk": base,
        "vm/vm-000001.vmdk": descriptor("VMFSSPARSE", "vm-000001-delta.vmdk", CAP // S,
                                        parent="vm.vmdk", cid="0000000b", parent_cid="0000000a"),
        "vm/vm-000001-delta.vmdk": cowd(CAP, mid, cowd_gs, seed=len(mid)),
        "vm/vm-000002.vmdk": descriptor("SESPARSE", "vm-000002-sesparse.vmdk", CAP // S,
                                        parent="vm-000001.vmdk", cid="0000000c",
                                        parent_cid="0000000b"),
        "vm/vm-000002-sesparse.vmdk": sesparse(CAP, top),
    }
    assert parse_descriptor(files["vm/vm-000002.vmdk"]).capacity == CAP
    want = compose(base, [mid, top], [gb, 4096])  # type: ignore[list-item]
    assert read_chain(files, "vm/vm-000002.vmdk", CAP) == want
    assert read_chain(files, "vm/vm-000001.vmdk", CAP) == compose(base, [mid], [gb])  # type: ignore[list-item]
