"""Grain tables of sparse snapshot deltas, decoded to runs (pure logic, no I/O).

A grain table maps each grain of a 4096-grain stretch of the disk to where its data is.  We
decode a whole table at once (vectorised with :mod:`pyarrow.compute`, never a Python loop per
grain) to a *where* value per grain:

* ``> 0`` — the file sector holding the grain's data;
* ``0`` — not in this layer: read the parent;
* ``-1`` — reads zeros (SESparse "zero" and "unmapped" grains).

Entry formats (as ESXi writes them and qemu's ``block/vmdk.c`` reads them):

* COWD (``VMFSSPARSE``): little-endian uint32 file sector, ``0`` = not in this layer;
* SESparse: little-endian uint64, type in the top nibble: ``0`` not in this layer (the whole
  entry must be 0), ``1`` unmapped (the guest trimmed it), ``2`` zero, ``3`` allocated with
  cluster ``c`` stored as ``((c & 0xfff) << 48) | (c >> 12)``; data at
  ``grains_offset + c * grain_sectors``; types ``4``–``15`` are corrupt.

A :class:`GrainRuns` then holds the table as *runs*: maximal stretches of grains that are all
"parent", all "zeros", or data in physically consecutive grains, so a read costs one step per
run, not per grain (a COWD delta of 512-byte grains holds 2,097,152 grains per GiB).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

PARENT = 0
ZEROS = -1
SES_TYPE_SHIFT = 60
SES_ALLOCATED, SES_ZERO, SES_UNMAPPED = 3, 2, 1


class CorruptTable(ValueError):
    """A grain table entry no writer produces (the caller names the file)."""


def cowd_wheres(raw: bytes) -> pa.Array:
    """Where-values (int64) of a COWD table: its entries are file sectors or 0."""
    n = len(raw) // 4
    table = pa.Array.from_buffers(pa.uint32(), n, [None, pa.py_buffer(raw[: 4 * n])])
    return table.cast(pa.int64())


def sesparse_wheres(raw: bytes, grains_offset: int, grain_sectors: int) -> pa.Array:
    """Where-values (int64) of an SESparse table (see the module docstring)."""
    n = len(raw) // 8
    e = pa.Array.from_buffers(pa.uint64(), n, [None, pa.py_buffer(raw[: 8 * n])])
    kind = pc.shift_right(e, pa.scalar(SES_TYPE_SHIFT, pa.uint64()))
    if n and pc.max(kind).as_py() > SES_ALLOCATED:
        bad = pc.index(pc.greater(kind, pa.scalar(SES_ALLOCATED, pa.uint64())), True).as_py()
        raise CorruptTable(f"grain type {kind[bad].as_py()} at entry {bad}")
    zero_kind = pc.equal(kind, pa.scalar(0, pa.uint64()))
    if n and pc.any(pc.and_(zero_kind, pc.not_equal(e, pa.scalar(0, pa.uint64())))).as_py():
        raise CorruptTable("unallocated grain entry with a non-zero payload")
    allocated = pc.equal(kind, pa.scalar(SES_ALLOCATED, pa.uint64()))
    low = pc.bit_wise_and(
        pc.shift_right(e, pa.scalar(48, pa.uint64())), pa.scalar(0xFFF, pa.uint64())
    )
    high = pc.shift_left(
        pc.bit_wise_and(e, pa.scalar(0xFFFFFFFFFFFF, pa.uint64())), pa.scalar(12, pa.uint64())
    )
    cluster = pc.if_else(allocated, pc.bit_wise_or(low, high), pa.scalar(0, pa.uint64()))
    try:
        sector = pc.add_checked(
            pc.multiply_checked(cluster, pa.scalar(grain_sectors, pa.uint64())),
            pa.scalar(grains_offset, pa.uint64()),
        ).cast(pa.int64())
    except (pa.ArrowInvalid, OverflowError):
        raise CorruptTable("allocated grain beyond any file size") from None
    return pc.if_else(
        allocated,
        sector,
        pc.if_else(zero_kind, pa.scalar(PARENT, pa.int64()), pa.scalar(ZEROS, pa.int64())),
    )


@dataclass(frozen=True)
class GrainRuns:
    """One grain table as runs: ``starts[k]`` is the first grain (index in the table) of run
    ``k``, ``wheres[k]`` its where-value; run ``k`` ends where run ``k + 1`` starts (the last at
    ``size``).  A data run's grain ``starts[k] + j`` is at sector ``wheres[k] + j * grain``."""

    starts: list[int]
    wheres: list[int]
    size: int
    grain: int

    @classmethod
    def from_wheres(cls, wheres: pa.Array, grain_sectors: int) -> GrainRuns:
        n = len(wheres)
        if n == 0:
            return cls([], [], 0, grain_sectors)
        prev, cur = wheres.slice(0, n - 1), wheres.slice(1)
        step = pc.subtract(cur, prev)
        zero = pa.scalar(0, pa.int64())
        data_on = pc.and_(
            pc.and_(pc.greater(prev, zero), pc.greater(cur, zero)),
            pc.equal(step, pa.scalar(grain_sectors, pa.int64())),
        )
        same = pc.and_(pc.less_equal(cur, zero), pc.equal(step, zero))
        breaks = pc.indices_nonzero(pc.invert(pc.or_(data_on, same)))
        starts = [0, *(i + 1 for i in breaks.to_pylist())]
        return cls(starts, pc.take(wheres, pa.array(starts)).to_pylist(), n, grain_sectors)

    def is_empty(self) -> bool:
        """True when every grain reads from the parent."""
        return self.wheres == [PARENT] or not self.wheres

    def spans(self, first: int, within: int, sectors: int) -> list[tuple[int, int]]:
        """``(sectors, where)`` pieces covering ``sectors`` sectors from sector ``within`` of
        grain ``first`` of this table (clipped to the table's end); ``where`` of a data piece
        is the file sector of its first sector."""
        gs = self.grain
        out: list[tuple[int, int]] = []
        k = bisect.bisect_right(self.starts, first) - 1
        at = first * gs + within  # sector offset inside the table's coverage
        end = min(at + sectors, self.size * gs)
        while at < end:
            run_end = (self.starts[k + 1] if k + 1 < len(self.starts) else self.size) * gs
            n = min(run_end, end) - at
            w = self.wheres[k]
            out.append((n, w + at - self.starts[k] * gs if w > 0 else w))
            at += n
            k += 1
        return out

    def held(self) -> list[tuple[int, int]]:
        """``(first grain, grains)`` runs this layer holds (data or zeros), in order, merged."""
        out: list[tuple[int, int]] = []
        for k, w in enumerate(self.wheres):
            if w == PARENT:
                continue
            s = self.starts[k]
            e = self.starts[k + 1] if k + 1 < len(self.starts) else self.size
            if out and out[-1][0] + out[-1][1] == s:
                out[-1] = (out[-1][0], out[-1][1] + e - s)
            else:
                out.append((s, e - s))
        return out
