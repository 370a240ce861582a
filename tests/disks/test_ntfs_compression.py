"""How vmkeep reads an NTFS-compressed stream, unit by unit, by NTFS's rule (as ntfs-3g reads
it): a unit starting sparse is zeros, a unit with every cluster is stored as it is, a unit of
clusters followed by a sparse run is LZNT1 — decoded and completed with zeros — and one that
does not decode is an ``OSError``, never a short read.  Real volumes made by ntfs-3g are read in
``test_disks_ntfs_elsewhere.py`` and ``test_fs_random_trees.py``."""

from __future__ import annotations

import io
import os
import struct

import pytest

from vmkeep.disks.fs.ntfs_compression import CompressedStream

CLUSTER, UNIT = 4096, 65536
#: one LZNT1 chunk stored uncompressed (header: signature 3, 4096 bytes), then the end marker
RAW = os.urandom(CLUSTER)
LZNT1 = struct.pack("<H", 0x3000 | (CLUSTER + 2 - 3)) + RAW + b"\0\0"
STORED = os.urandom(16 * CLUSTER)


def stream(runs: list[tuple[int | None, int]]) -> CompressedStream:
    disk = bytearray(CLUSTER * 40)
    disk[: len(LZNT1)] = LZNT1  # clusters 0-1: a compressed unit's data
    disk[2 * CLUSTER: 18 * CLUSTER] = STORED  # clusters 2-17: a unit stored as it is
    disk[20 * CLUSTER: 21 * CLUSTER] = b"\xff" * CLUSTER  # cluster 20: not LZNT1
    size = sum(count for _, count in runs) * CLUSTER
    return CompressedStream(io.BytesIO(bytes(disk)), runs, size, CLUSTER, 4)


def test_each_kind_of_unit() -> None:
    s = stream([(None, 16), (2, 16), (0, 2), (None, 14), (20, 1), (None, 3), (0, 2), (None, 10)])
    assert s.read(UNIT) == bytes(UNIT)  # sparse
    assert s.read(UNIT) == STORED  # stored as it is
    assert s.read(UNIT) == RAW + bytes(UNIT - CLUSTER)  # LZNT1, completed with zeros
    # clusters that are not LZNT1 (a hole between them read as zeros): an error, not raw bytes
    with pytest.raises(OSError, match="compression unit 3 does not decode"):
        s.read(UNIT)


def test_a_last_unit_compressed_into_exactly_the_bytes_left_is_decoded() -> None:
    """The file has 8192 bytes left and its unit two clusters: dissect.ntfs stopped there and
    returned the clusters themselves."""
    s = stream([(0, 2), (None, 14)])
    s.size = 2 * CLUSTER
    assert s.read() == (RAW + bytes(UNIT))[: 2 * CLUSTER]


def test_a_unit_that_does_not_decode_fails_its_read() -> None:
    s = stream([(20, 1), (None, 15)])
    with pytest.raises(OSError, match="does not decode"):
        s.read(100)
