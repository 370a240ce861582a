"""Allocation bitmaps as NTFS (``$Bitmap``) and ext2/3/4 (block bitmaps) keep them: bit ``i``
(least significant bit first within each byte) set when cluster or block ``i`` is in use.
Pure functions over ``bytes``; used by :mod:`vmkeep.disks.deleted_blocks` and
:mod:`vmkeep.disks.ext_bitmap`."""

from __future__ import annotations

import re


def all_set(bitmap: bytes | bytearray, first: int, count: int, bits: int) -> bool:
    """Whether bits ``[first, first + count)`` all lie in the bitmap's first ``bits`` bits and
    are all set."""
    if first < 0 or count < 0 or first + count > bits or bits > len(bitmap) * 8:
        return False
    lo, hi = -(-first // 8), (first + count) // 8  # the whole bytes of the run
    if lo < hi and bitmap[lo:hi].count(0xFF) != hi - lo:
        return False
    edges = range(first, min(first + count, lo * 8)), range(max(first, hi * 8), first + count)
    return all(bitmap[c >> 3] >> (c & 7) & 1 for edge in edges for c in edge)


def clear_runs(bitmap: bytes | bytearray, bits: int, least_bytes: int) -> list[tuple[int, int]]:
    """``(first bit, end bit)`` of each run of at least ``least_bytes`` all-clear bitmap bytes
    (so runs start and end on multiples of eight), clipped to the first ``bits`` bits."""
    runs: list[tuple[int, int]] = []
    # a literal prefix: the regex engine skips bytes in use at C speed (``\x00{n,}`` would try
    # every position), the greedy tail takes the free ones
    pattern = re.compile(re.escape(bytes(max(1, least_bytes))) + rb"\x00*")
    for found in pattern.finditer(bitmap):
        first, end = found.start() * 8, min(found.end() * 8, bits)
        if end > first:
            runs.append((first, end))
    return runs


def clear_count(bitmap: bytes | bytearray, bits: int) -> int:
    """How many of the first ``bits`` bits are clear."""
    whole, rest = divmod(bits, 8)
    clear = whole * 8 - int.from_bytes(bitmap[:whole], "little").bit_count()
    if rest:
        clear += rest - (bitmap[whole] & ((1 << rest) - 1)).bit_count()
    return clear
