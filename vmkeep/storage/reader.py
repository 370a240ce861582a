"""Random access to a backed-up disk, fetching and caching only the chunks a read touches.

:class:`PointReader` is a read-only, seekable binary file (``io.RawIOBase``) over one disk of one
restore point.  File-system browsing, single-file restore and the FUSE mount stand on it, so it
must never read more than the chunks a request overlaps.  All-zero chunks cost no I/O.  Every
fetched chunk is authenticated (keyed BLAKE3) before use; errors are typed
(``BlobMissing``, ``DataCorrupt``).  ``pread`` is thread-safe; the file-position API is not.
"""

from __future__ import annotations

import bisect
import io
import threading
from concurrent.futures import ThreadPoolExecutor

from vmkeep.lru import LRU
from vmkeep.storage.codec import ZERO_ID
from vmkeep.storage.manifest import ChunkTable, RestorePoint
from vmkeep.storage.repository import Repository


class ChunkCache:
    """A small thread-safe LRU of decoded chunks, keyed by blob id."""

    def __init__(self, repo: Repository, capacity: int = 32) -> None:
        self.repo = repo
        self.capacity = capacity
        self._items: LRU[bytes, bytes] = LRU(capacity)
        self._lock = threading.Lock()  # the counters
        self.fetches = 0
        self.bytes_fetched = 0  # decoded bytes of the chunks fetched from the repository

    def get(self, blob_id: bytes) -> bytes:
        data = self._items.get(blob_id)
        if data is not None:
            return data
        data = self.repo.read_blob(blob_id)
        with self._lock:
            self.fetches += 1
            self.bytes_fetched += len(data)
        self._items.put(blob_id, data)
        return data


class PointReader(io.RawIOBase):
    """Read-only view of disk ``disk`` of ``point``, a
    :class:`~vmkeep.storage.disk_source.DiskReader`.  See the module docstring."""

    random_access = True

    def __init__(
        self,
        repo: Repository,
        point: RestorePoint,
        disk: int = 0,
        cache_chunks: int = 32,
        readahead: int = 0,
    ) -> None:
        super().__init__()
        if disk not in point.chunks:
            from vmkeep.storage.errors import PointNotFound

            raise PointNotFound(f"{point.short_id} disk {disk}")
        self.repo = repo
        self.table: ChunkTable = point.chunks[disk]
        self.size = self.table.size
        self.cache = ChunkCache(repo, max(cache_chunks, readahead + 2))
        self._pos = 0
        self._readahead = readahead
        self._pool = ThreadPoolExecutor(readahead) if readahead else None

    # -- random access -------------------------------------------------------------------------
    def _chunk_at(self, offset: int) -> int:
        return bisect.bisect_right(self.table.offsets, offset) - 1

    def chunk_data(self, i: int) -> bytes | None:
        """Decoded chunk ``i``, or ``None`` for an all-zero chunk."""
        blob_id = self.table.blob_id(i)
        return None if blob_id == ZERO_ID else self.cache.get(blob_id)

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (short only at the end of the disk)."""
        end = min(self.size, offset + max(0, length))
        if offset >= end:
            return b""
        parts: list[bytes] = []
        i = self._chunk_at(offset)
        if self._pool is not None:
            last = self._chunk_at(end - 1)
            for j in range(last + 1, min(last + 1 + self._readahead, len(self.table))):
                if self.table.blob_id(j) != ZERO_ID:
                    self._pool.submit(self.cache.get, self.table.blob_id(j))
        while offset < end:
            start = self.table.offsets[i]
            length_i = self.table.lengths[i]
            lo = offset - start
            hi = min(length_i, end - start)
            data = self.chunk_data(i)
            parts.append(bytes(hi - lo) if data is None else data[lo:hi])
            offset = start + hi
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)  # one copy, not two

    # -- io.RawIOBase --------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.pread(self._pos, len(buffer))
        n = len(data)
        memoryview(buffer)[:n] = data
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self._pos
        data = self.pread(self._pos, size)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()
