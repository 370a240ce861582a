"""A write session: packs blobs, uploads packs in the background, then writes one index.

Commit order (the repository's crash-safety rule): every pack is uploaded before the index that
lists it, and the index before any manifest that references its blobs.  A session that dies
leaves only unreferenced packs (or an unreferenced index), which prune removes after its grace
period; no restore point can reference data that is not durably stored.

Threading: :meth:`add` is called by one thread (the data path's ordered consumer); uploads run on
``uploaders`` threads, with at most ``max_pending`` finished packs held in memory.  A backend with
``put_parts(key, parts, written)`` (the local one) calls ``written`` once the parts are no longer
needed (handed to the OS, or copied for an ``O_DIRECT`` write) and before its ``fsync``: the
pack's memory is freed and its slot released then, so the
next packs are hashed and written while earlier ones are still being made durable (up to
``uploaders`` packs in flight; the index is still written only after every pack is durable).
:meth:`known` may be called from any thread.

Compression units (codec 3, repository version 4; :meth:`WriteSession.add_unit`) go to the
data packs: one payload, one entry per piece.

Recipes (codec 2) go to packs of their own, sealed when full or at :meth:`flush`: the recipes of
consecutive frames then sit back to back, so a restore reads thousands of them with one ranged
``get`` and the frames' pieces stay contiguous in the data packs.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from vmkeep.storage import crash_points
from vmkeep.storage.codec import CODEC_RECIPE, CODEC_ZSTD
from vmkeep.storage.index import encode_index
from vmkeep.storage.pack import PackBuilder, PackEntry, pack_key

if TYPE_CHECKING:
    from vmkeep.storage.repository import Repository


class WriteSession:
    """Adds blobs to a repository.  Use as a context manager or call :meth:`commit`."""

    def __init__(self, repo: Repository, uploaders: int = 8, max_pending: int = 2) -> None:
        self.repo = repo
        self.pack_size = repo.config.pack_size
        self._builder = PackBuilder(repo.pack_version)
        self._recipes = PackBuilder(repo.pack_version)  # recipes (codec 2): packs of their own
        self._session_blobs: dict[bytes, None] = {}
        self._written: list[tuple[bytes, PackEntry]] = []
        self._pool = ThreadPoolExecutor(uploaders, thread_name_prefix="vmkeep-upload")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._futures: list[Future[None]] = []
        self._lock = threading.Lock()
        self.bytes_stored = 0
        self.blobs_new = 0
        self.index_key: str | None = None

    def known(self, blob_id: bytes) -> bool:
        """True if the blob is already in the repository or in this session."""
        return blob_id in self._session_blobs or blob_id in self.repo.index

    def add(
        self,
        blob_id: bytes,
        codec: int,
        payload: bytes | memoryview,
        raw_length: int,
        level: int | None = None,
    ) -> bool:
        """Store a blob unless known; returns whether it was new.  Upload errors surface here.
        ``level``: the zstd level a codec-1 payload was compressed at (recorded in its pack's
        entry); default the repository's level, which :class:`~vmkeep.storage.codec.BlobCodec`
        uses when not told otherwise."""
        self._raise_upload_errors()
        if self.known(blob_id):
            return False
        self._session_blobs[blob_id] = None
        payload = self.repo.encode_payload(blob_id, codec, payload)
        recipe = codec == CODEC_RECIPE
        target = self._recipes if recipe else self._builder
        if codec == CODEC_ZSTD and level is None:
            level = self.repo.codec.level
        target.add(blob_id, codec, payload, raw_length, level)
        self.bytes_stored += len(payload)
        self.blobs_new += 1
        if len(target) >= self.pack_size:
            self._seal(recipe)
        return True

    def add_unit(
        self,
        members: list[tuple[bytes, int, int]],
        payload: bytes,
        unit_length: int,
        level: int | None = None,
    ) -> list[tuple[bytes, int, int]]:
        """Store one compression unit (repository version 4): ``payload`` is the zstd frame of
        the pieces ``members`` — ``(id, offset in the unit, length)`` — joined, ``unit_length``
        bytes decoded.  Pieces already known are not listed again (their bytes stay in the
        unit, unreferenced); a unit whose every piece is known is not stored.  Returns the
        members it listed.  The data path avoids known pieces in the first place
        (:mod:`vmkeep.storage.disk_backup` claims each new piece for one frame)."""
        self._raise_upload_errors()
        fresh = [m for m in members if not self.known(m[0])]
        if not fresh:
            return []
        for blob_id, _, _ in fresh:
            self._session_blobs[blob_id] = None
        stored = self.repo.encode_unit_payload(unit_length, payload)
        self._builder.add_unit(
            fresh, stored, unit_length, self.repo.codec.level if level is None else level
        )
        self.bytes_stored += len(stored)
        self.blobs_new += len(fresh)
        if len(self._builder) >= self.pack_size:
            self._seal()
        return fresh

    def _seal(self, recipes: bool = False) -> None:
        if recipes:
            builder, self._recipes = self._recipes, PackBuilder(self.repo.pack_version)
        else:
            builder, self._builder = self._builder, PackBuilder(self.repo.pack_version)
        if not builder.entries:
            return
        self._slots.acquire()
        try:
            future = self._pool.submit(self._upload, builder)
        except BaseException:
            self._slots.release()
            raise
        self._futures.append(future)

    def _upload(self, builder: PackBuilder) -> None:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._slots.release()

        try:
            pack_id, parts, entries = builder.finish_parts(self.repo.cipher)
            put_parts = getattr(self.repo.backend, "put_parts", None)
            if put_parts is not None:  # gathering write, no contiguous copy of the pack

                def written() -> None:
                    parts.clear()  # written or copied by the backend: free the payloads
                    release()

                put_parts(pack_key(pack_id), parts, written)
            else:
                data = b"".join(parts)
                parts.clear()
                self.repo.backend.put(pack_key(pack_id), data)
            with self._lock:
                self._written.extend((pack_id, e) for e in entries)
        finally:
            release()
        crash_points.reached("pack")

    def _raise_upload_errors(self) -> None:
        pending = []
        for future in self._futures:
            if future.done():
                future.result()  # re-raises the upload's exception
            else:
                pending.append(future)
        self._futures = pending

    def flush(self) -> None:
        """Seal the open packs and wait until every pack is durably stored."""
        self._seal()
        self._seal(recipes=True)
        for future in self._futures:
            future.result()
        self._futures = []

    def commit(self) -> str | None:
        """Flush packs, then write this session's index; add its blobs to the repo's index."""
        self.flush()
        self._pool.shutdown()
        if not self._written:
            return None
        key, data = encode_index(self._written, self.repo.index_version)
        self.repo.backend.put(key, data)
        crash_points.reached("index")
        for pack_id, entry in self._written:
            self.repo.index.add(pack_id, entry)
        self.index_key = key
        return key

    def abort(self) -> None:
        """Stop uploading; whatever was uploaded stays unreferenced until prune."""
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WriteSession:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
