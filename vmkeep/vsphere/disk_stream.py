"""A backed-up disk as a streamOptimized VMDK stream, for NFC import uploads.

:func:`vmdk_stream` reads the repository's chunks in order (a few fetched ahead on threads),
skips all-zero and never-written chunks, and feeds the rest to
:func:`vmkeep.disks.vmdk.stream_writer.stream`, which also drops all-zero grains.  Chunks
whose offsets are not 64 KiB-aligned (not produced by vmkeep today) are read through ``pread``
in aligned 4 MiB windows instead.  :class:`StreamStats` counts what was sent.

Test hook: each piece handed on calls ``crash_points.reached("restore-piece")`` (a no-op unless a
test arms it), so a test can kill -9 a restore mid-upload deterministically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from vmkeep.disks.vmdk.stream_writer import GRAIN, StreamOptions, stream
from vmkeep.storage import crash_points
from vmkeep.storage.reader import PointReader

WINDOW = 4 << 20


@dataclass
class StreamStats:
    capacity: int = 0
    bytes_sent: int = 0  # bytes of the VMDK stream (what crosses the network)
    data_bytes: int = 0  # disk bytes of the chunks holding data
    offset: int = 0  # disk offset reached


def reader_pieces(
    reader: PointReader, prefetch: int = 4
) -> Iterator[tuple[int, int, bytes | None]]:
    """``(offset, length, data or None)`` for the disk in order (module docstring)."""
    table = reader.table
    n = len(table)
    if any(table.offsets[i] % GRAIN for i in range(n)):
        for off in range(0, reader.size, WINDOW):
            data = reader.pread(off, WINDOW)
            yield off, len(data), data
        return
    with ThreadPoolExecutor(max(1, prefetch), thread_name_prefix="restore-fetch") as pool:
        ahead: dict[int, Future[bytes | None]] = {}
        for i in range(n):
            for j in range(i, min(n, i + prefetch + 1)):
                if j not in ahead:
                    ahead[j] = pool.submit(reader.chunk_data, j)
            yield table.offsets[i], table.lengths[i], ahead.pop(i).result()


def vmdk_stream(
    reader: PointReader,
    stats: StreamStats,
    opts: StreamOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The streamOptimized VMDK of ``reader``'s disk; updates ``stats`` as it goes."""
    stats.capacity = reader.size

    def pieces() -> Iterator[tuple[int, bytes | None]]:
        for off, length, data in reader_pieces(reader):
            crash_points.reached("restore-piece")
            if data is not None:
                stats.data_bytes += len(data)
            stats.offset = off + length
            if progress is not None:
                progress(length)
            yield off, data

    for part in stream(reader.size, pieces(), opts):
        stats.bytes_sent += len(part)
        yield part
