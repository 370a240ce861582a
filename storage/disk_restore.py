"""Restore a backed-up disk to a raw image file (bit-identical), fast and sparse.

Chunks are fetched and decoded on ``workers`` threads (at most ``2 × workers`` in flight) and
written with ``pwrite`` in order; all-zero chunks become holes.  The output is written to a
temporary name beside the target and renamed into place only when complete and fsync'ed, so a
failed restore never leaves a plausible-looking partial image under the requested name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from vmkeep.storage.codec import ZERO_ID
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.repository import Repository


def restore_disk(
    repo: Repository,
    point: RestorePoint,
    disk: int,
    target: str,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write disk ``disk`` of ``point`` to the file ``target``; returns bytes restored."""
    table = point.chunks[disk]
    workers = workers or max(2, os.cpu_count() or 2)
    directory = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(directory, f".{os.path.basename(target)}.vmkeep-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    inflight: deque[tuple[int, Future[bytes]]] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vmkeep-restore")
    try:

        def drain_one() -> None:
            offset, future = inflight.popleft()
            data = future.result()
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            if progress:
                progress(len(data))

        for i in range(len(table)):
            blob_id = table.blob_id(i)
            if blob_id == ZERO_ID:
                if progress:
                    progress(table.lengths[i])
                continue
            inflight.append((table.offsets[i], pool.submit(repo.read_blob, blob_id)))
            if len(inflight) >= 2 * workers:
                drain_one()
        while inflight:
            drain_one()
        os.ftruncate(fd, table.size)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        for _, future in inflight:
            future.cancel()
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return table.size
