"""The CBT truth audit's sample and comparison (pure: no vSphere)."""

from __future__ import annotations

import os

import pytest

from vmkeep.errors import UsageError
from vmkeep.storage.cbt_audit import (
    AuditPolicy,
    audit_disk,
    changed_ranges,
    neighbours,
    select_chunks,
)
from vmkeep.storage.codec import ChunkHasher
from vmkeep.storage.manifest import ChunkTable

CHUNK = 4096


def _table(data: bytes) -> ChunkTable:
    table = ChunkTable()
    for off in range(0, len(data), CHUNK):
        piece = data[off : off + CHUNK]
        table.append(off, len(piece), b"\1" * 32, ChunkHasher.fingerprint(piece))
    return table


def test_policy_parse() -> None:
    assert AuditPolicy.parse("off") is None
    assert AuditPolicy.parse(None) == AuditPolicy()
    assert AuditPolicy.parse("2%") == AuditPolicy(2.0, 5.0)
    assert AuditPolicy.parse("20") == AuditPolicy(20.0, 20.0)
    for bad in ("lots", "-1", "101"):
        with pytest.raises(UsageError):
            AuditPolicy.parse(bad)


def test_sample_is_seeded_capped_and_skips_read_chunks() -> None:
    n = 10_000
    read = set(range(100, 200))
    policy = AuditPolicy()
    near = neighbours([[100, 200]])
    a = select_chunks(n, CHUNK, n * CHUNK, lambda i: i not in read, near, policy, 7)
    assert a == select_chunks(n, CHUNK, n * CHUNK, lambda i: i not in read, near, policy, 7)
    assert a != select_chunks(n, CHUNK, n * CHUNK, lambda i: i not in read, near, policy, 8)
    assert not read & set(a)
    assert {99, 200} <= set(a)  # the previous changes' neighbours
    assert 50 <= len(a) <= 52  # 0.5 % of the chunks plus two neighbours
    many = [[i, i + 1] for i in range(0, n, 3)]
    capped = select_chunks(n, CHUNK, n * CHUNK, lambda i: True, neighbours(many), policy, 7)
    assert len(capped) == n * 5 // 100  # never more than 5 % of the disk


def test_audit_finds_a_change_cbt_did_not_report() -> None:
    old = os.urandom(64 * CHUNK)
    new = bytearray(old)
    new[10 * CHUNK + 5] ^= 0xFF  # written, but CBT says only chunk 9 changed
    new[9 * CHUNK] ^= 0xFF

    def pread(off: int, n: int) -> bytes:
        return bytes(new[off : off + n])

    kwargs = dict(parent=_table(old), read_extents=[(9 * CHUNK, 10)], policy=AuditPolicy())
    caught = audit_disk(pread, len(new), CHUNK, previous_ranges=[[8, 10]], seed=1, **kwargs)
    assert caught.suspect and caught.mismatch_offsets == [10 * CHUNK]
    assert caught.bytes_audited == caught.chunks_sampled * CHUNK
    honest = audit_disk(
        lambda off, n: old[off : off + n],
        len(old),
        CHUNK,
        previous_ranges=[[8, 10]],
        seed=1,
        **kwargs,
    )
    assert not honest.suspect and honest.to_json()["result"] == "ok"


def test_unallocated_chunks_must_be_zero() -> None:
    disk = bytearray(16 * CHUNK)
    disk[0:CHUNK] = os.urandom(CHUNK)
    disk[12 * CHUNK] = 1  # data "*" did not report
    result = audit_disk(
        lambda off, n: bytes(disk[off : off + n]),
        len(disk),
        CHUNK,
        parent=None,
        read_extents=[(0, CHUNK)],
        previous_ranges=[],
        policy=AuditPolicy(100.0, 100.0),
        seed=3,
    )
    assert result.expected == "zeros" and result.mismatch_offsets == [12 * CHUNK]
    assert result.chunks_sampled == 15


def test_changed_ranges_are_chunk_ranges() -> None:
    assert changed_ranges([(0, 1), (CHUNK * 3 + 1, CHUNK)], 8 * CHUNK, CHUNK) == [[0, 1], [3, 5]]


def test_a_wrong_allocated_answer_is_caught_at_the_partition_table() -> None:
    disk = bytearray(1024 * CHUNK)
    disk[0:512] = os.urandom(512)  # the GPT, which a wrong "*" did not report
    disk[500 * CHUNK : 501 * CHUNK] = os.urandom(CHUNK)
    result = audit_disk(
        lambda off, n: bytes(disk[off : off + n]),
        len(disk),
        CHUNK,
        parent=None,
        read_extents=[(500 * CHUNK, CHUNK)],
        previous_ranges=[],
        policy=AuditPolicy(),
        seed=5,
    )
    assert result.suspect and 0 in result.mismatch_offsets
