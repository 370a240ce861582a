"""Roll a disk file back to a restore point by writing only where it differs (quick rollback).

:func:`roll_back` brings an open, writable file holding a raw disk (a VM's flat extent on a
datastore mounted here) to the content of one disk of a restore point.  It looks only at
``areas`` — what changed-block tracking reports as written since the point — or, when ``areas``
is None, at the whole disk.  Inside those areas it reads the file and the point slice by slice
(a slice is the part of one point chunk inside one area) and rewrites only the 64 KiB blocks
(:data:`BLOCK`) where the two differ, so a block the guest rewrote with the same bytes costs a
read, not a write, and a whole-disk compare writes little more than what changed.

Contracts:

* **The file is the disk** — a flat extent, or the block device of a hot-added disk.  Offsets in
  it are offsets in the disk; bytes past a regular file's end read as zeros (a thin flat file may
  be shorter), and a shorter file is extended (sparse) to ``reader.size``; it is never
  truncated.
* **Idempotent.**  Running it again after an interruption finishes the job: every slice either
  already equals the point (skipped) or is written again.  Nothing outside ``areas`` is touched.
* **Durable on return.**  The file is ``fsync``-ed before :func:`roll_back` returns; an error
  (``OSError`` from the file, a repository error from the point) propagates with the file partly
  rolled back — which is why the caller must make change tracking forget the disk *before* the
  first write (the job resets CBT first).
* All-zero point chunks are compared against zeros without fetching anything; zeros are written
  as zeros (the file system may allocate them).
"""

from __future__ import annotations

import bisect
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vmkeep.storage import crash_points
from vmkeep.storage.reader import PointReader

#: the largest slice read and compared at once (a point chunk is at most this in practice)
MAX_SLICE = 4 << 20
#: what is rewritten where a slice differs: the blocks of this size that differ, not the slice
BLOCK = 64 << 10


@dataclass(frozen=True)
class RollbackStats:
    """What :func:`roll_back` did: ``bytes_checked`` compared, ``bytes_written`` rewritten
    (a subset), ``slices_written`` pwrite calls (runs of differing blocks)."""

    bytes_checked: int = 0
    bytes_written: int = 0
    slices_written: int = 0


def _slices(
    reader: PointReader, areas: Iterable[tuple[int, int]]
) -> Iterable[tuple[int, int, int]]:
    """``(chunk index, offset, length)`` of each area's part inside each point chunk."""
    offsets = reader.table.offsets
    lengths = reader.table.lengths
    for start, length in areas:
        end = min(start + length, reader.size)
        pos = max(0, start)
        i = bisect.bisect_right(offsets, pos) - 1
        while pos < end:
            chunk_end = offsets[i] + lengths[i]
            stop = min(end, chunk_end, pos + MAX_SLICE)
            yield i, pos, stop - pos
            pos = stop
            if pos >= chunk_end:
                i += 1


def _differing(have: bytes, want: bytes) -> list[tuple[int, int]]:
    """``(start, stop)`` runs of :data:`BLOCK`-sized blocks where ``have`` and ``want`` differ
    (adjacent differing blocks merged into one write)."""
    runs: list[tuple[int, int]] = []
    a, b = memoryview(have), memoryview(want)
    for start in range(0, len(want), BLOCK):
        stop = min(start + BLOCK, len(want))
        if a[start:stop] != b[start:stop]:
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], stop)
            else:
                runs.append((start, stop))
    return runs


def _read_at(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes of the file at ``offset``, zeros past its end."""
    data = os.pread(fd, length, offset)
    if len(data) < length:
        data += bytes(length - len(data))
    return data


def roll_back(
    reader: PointReader,
    fd: int,
    areas: Iterable[tuple[int, int]] | None,
    progress: Callable[[int], None] | None = None,
) -> RollbackStats:
    """Make ``areas`` of the file ``fd`` (None: all of it) equal the point ``reader`` reads;
    see the module docstring.  ``progress`` gets the bytes checked as they are."""
    todo = [(0, reader.size)] if areas is None else sorted(areas)
    checked = written = slices = 0
    cached: tuple[int, bytes | None] | None = None
    for i, offset, length in _slices(reader, todo):
        if cached is None or cached[0] != i:
            cached = (i, reader.chunk_data(i))
        data = cached[1]
        inside = offset - reader.table.offsets[i]
        want = bytes(length) if data is None else data[inside:inside + length]
        have = _read_at(fd, offset, length)
        if have != want:
            for start, stop in _differing(have, want):
                crash_points.reached("rollback-write")
                os.pwrite(fd, want[start:stop], offset + start)
                written += stop - start
                slices += 1
        checked += length
        if progress is not None:
            progress(length)
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_size < reader.size:  # a block device has its size
        os.ftruncate(fd, reader.size)
    os.fsync(fd)
    return RollbackStats(checked, written, slices)
