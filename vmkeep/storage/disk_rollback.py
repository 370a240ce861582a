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
  Chunks are handled by several threads at once, in no guaranteed order (each writes only its
  own slices), which the idempotence makes safe.
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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from vmkeep.storage import crash_points
from vmkeep.storage.reader import PointReader

#: the largest slice read and compared at once (a point chunk is at most this in practice)
MAX_SLICE = 4 << 20
#: what is rewritten where a slice differs: the blocks of this size that differ, not the slice
BLOCK = 64 << 10
#: point chunks fetched, compared and written at once (threads), and chunks queued per thread
WORKERS = min(4, (os.cpu_count() or 1) + 1)
INFLIGHT_PER_WORKER = 2
#: ``read(fd, offset, length) -> bytes``: how the disk file is read
ReadAt = Callable[[int, int, int], bytes]


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


def read_at(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes of the file at ``offset``, zeros past its end (how :func:`roll_back`
    reads the disk unless told otherwise)."""
    data = os.pread(fd, length, offset)
    if len(data) < length:
        data += bytes(length - len(data))
    return data


def _chunk_groups(
    reader: PointReader, areas: Iterable[tuple[int, int]]
) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """``(chunk index, [(offset, length), …])``: the slices of :func:`_slices`, one group per
    point chunk met (consecutive slices of one chunk share one fetch)."""
    group: tuple[int, list[tuple[int, int]]] | None = None
    for i, offset, length in _slices(reader, areas):
        if group is None or group[0] != i:
            if group is not None:
                yield group
            group = (i, [])
        group[1].append((offset, length))
    if group is not None:
        yield group


def _roll_back_chunk(
    reader: PointReader, fd: int, i: int, slices: list[tuple[int, int]], read: ReadAt,
) -> tuple[int, int, int]:
    """Compare and rewrite the ``slices`` of point chunk ``i``; ``(checked, written, runs)``."""
    data = reader.chunk_data(i)
    checked = written = runs = 0
    for offset, length in slices:
        inside = offset - reader.table.offsets[i]
        want = bytes(length) if data is None else data[inside:inside + length]
        have = read(fd, offset, length)
        if have != want:
            for start, stop in _differing(have, want):
                crash_points.reached("rollback-write")
                os.pwrite(fd, want[start:stop], offset + start)
                written += stop - start
                runs += 1
        checked += length
    return checked, written, runs


def roll_back(
    reader: PointReader,
    fd: int,
    areas: Iterable[tuple[int, int]] | None,
    progress: Callable[[int], None] | None = None,
    workers: int = WORKERS,
    read: ReadAt = read_at,
) -> RollbackStats:
    """Make ``areas`` of the file ``fd`` (None: all of it) equal the point ``reader`` reads;
    see the module docstring.  ``progress`` gets the bytes checked as they are (on the calling
    thread).  ``workers`` threads fetch, compare and write point chunks at once (decoding and
    the file's reads and writes release the GIL); each writes only inside its own chunk's
    slices.  ``read(fd, offset, length)`` reads the file (:func:`read_at`; a benchmark passes
    one with latency).  On an error no worker is writing any more when the error propagates."""
    todo = [(0, reader.size)] if areas is None else _merged(areas)
    checked = written = slices = 0
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="rollback") as pool:
        pending: deque[Future[tuple[int, int, int]]] = deque()
        try:
            for i, group in _chunk_groups(reader, todo):
                pending.append(pool.submit(_roll_back_chunk, reader, fd, i, group, read))
                while len(pending) >= INFLIGHT_PER_WORKER * max(1, workers):
                    checked, written, slices = _collect(pending.popleft(), progress,
                                                        checked, written, slices)
            while pending:
                checked, written, slices = _collect(pending.popleft(), progress,
                                                    checked, written, slices)
        except BaseException:
            for future in pending:
                future.cancel()  # not started: never runs; running ones finish first (``with``)
            raise
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_size < reader.size:  # a block device has its size
        os.ftruncate(fd, reader.size)
    os.fsync(fd)
    return RollbackStats(checked, written, slices)


def _merged(areas: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``areas`` sorted, overlapping and touching ones joined (each byte compared once, by one
    thread)."""
    out: list[tuple[int, int]] = []
    for start, length in sorted(a for a in areas if a[1] > 0):
        if out and start <= out[-1][0] + out[-1][1]:
            first, n = out[-1]
            out[-1] = (first, max(n, start + length - first))
        else:
            out.append((start, length))
    return out


def _collect(
    future: Future[tuple[int, int, int]], progress: Callable[[int], None] | None,
    checked: int, written: int, slices: int,
) -> tuple[int, int, int]:
    done, wrote, runs = future.result()
    if progress is not None:
        progress(done)
    return checked + done, written + wrote, slices + runs
