"""The file data path: walk a source, reuse unchanged files, chunk (CDC), hash, compress, dedupe.

One call backs up one source tree into a repository and returns its entries; the caller then
publishes the restore point (:func:`vmkeep.storage.file_manifest.save_file_point`).  Blobs go to
the same store as image chunks (same keyed ids, same codec), so identical content deduplicates
across file and image backups.  No Prefect here, and no file-system specifics: the source is any
:class:`FileSource` (local walker, SFTP, SMB — see :mod:`vmkeep.guestfiles.sources`).

Change detection: a file whose previous-point entry has the same type, size, ``mtime_ns``, and —
where both points know them — ``ctime_ns`` and inode, and whose chunks are all still in the
index, reuses that chunk list without being opened (its xattrs too, when the ctime matched).

Per-file problems never fail the run: an unreadable file is left out of the point and reported
(``unreadable``); a file whose size, mtime or ctime differ after reading, or which returned a
different number of bytes than its size, is stored as read and reported
(``changed-while-read``).  Repository errors (target full, unreachable) do fail the run.

Pipeline: small files are read, cut, hashed and compressed in batches on ``workers`` threads;
large files (over :data:`LARGE`) are read and cut on the calling thread and their chunks hashed
and compressed on the pool.  The calling thread alone feeds the write session.  At most
``4 × workers`` jobs are in flight, each at most :data:`BATCH_BYTES` or one chunk, so memory
stays bounded whatever the tree.  Atomicity: when this returns, the packs and the index are
durable; nothing is a restore point until its manifest is saved.  Nothing is retried here.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from vmkeep.errors import VmkeepError
from vmkeep.storage.cdc import Chunker, require_compiled
from vmkeep.storage.file_manifest import FileEntry, FilePoint
from vmkeep.storage.repository import Repository
from vmkeep.storage.writer import WriteSession

#: Files above this size are streamed chunk by chunk on the calling thread.
LARGE = 16 * 1024 * 1024
#: A batch of small files holds at most this many bytes or :data:`BATCH_FILES` files.
BATCH_BYTES = 8 * 1024 * 1024
BATCH_FILES = 128
MAX_WARNINGS_KEPT = 1000

Warn = Callable[[str, str, str], None]
Progress = Callable[[int], None]
Blob = tuple[bytes, int, bytes | None, int]  # id, codec, payload (None: known), raw length


class FileSource(Protocol):
    """What the data path needs from a source tree (contracts in :mod:`vmkeep.guestfiles`)."""

    location: str
    has_xattrs: bool

    def walk(self, warn: Warn) -> Iterator[FileEntry]:
        """Entries in :func:`~vmkeep.storage.file_manifest.sort_key` order, root first."""
        ...

    def open(self, entry: FileEntry) -> BinaryIO:
        """Open a file for reading; ``OSError`` or a ``VmkeepError`` means unreadable."""
        ...

    def changed(self, entry: FileEntry, f: BinaryIO, nread: int) -> str | None:
        """After reading ``nread`` bytes: why the file changed while read, or ``None``."""
        ...

    def read_xattrs(self, entry: FileEntry) -> list[tuple[bytes, bytes]] | None: ...


@dataclass(frozen=True)
class FileWarning:
    """A per-file problem: ``reason`` is ``unreadable``, ``changed-while-read`` or
    ``unreadable-dir`` / ``excluded-cache`` / ``skipped`` (from the walker)."""

    path: str
    reason: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


@dataclass
class FileStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_read: int = 0
    bytes_read: int = 0
    bytes_new: int = 0
    bytes_stored: int = 0
    chunks_new: int = 0
    unreadable: int = 0
    changed_while_read: int = 0
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class FileBackupResult:
    entries: list[FileEntry]
    stats: FileStats
    warnings: list[FileWarning] = field(default_factory=list)
    index_key: str | None = None

    @property
    def partial(self) -> bool:
        return self.stats.unreadable > 0


def _unchanged(old: FileEntry | None, new: FileEntry) -> bool:
    return (
        old is not None
        and old.type == new.type
        and old.size == new.size
        and old.mtime_ns == new.mtime_ns
        and (old.ctime_ns is None or new.ctime_ns is None or old.ctime_ns == new.ctime_ns)
        and (old.inode is None or new.inode is None or old.inode == new.inode)
    )


class _Worker:
    """Pool-side work: read small files whole, or hash and compress one chunk."""

    def __init__(self, repo: Repository, source: FileSource, session: WriteSession) -> None:
        self.repo, self.source, self.known = repo, source, session.known
        self.cdc = repo.config.cdc

    def blob(self, data: bytes | memoryview) -> Blob:
        blob_id = self.repo.hasher.chunk_id(data)
        if self.known(blob_id):
            return blob_id, 0, None, len(data)
        codec, payload = self.repo.codec.encode(data)
        return blob_id, codec, payload, len(data)

    def batch(self, entries: list[FileEntry]) -> list[tuple[list[Blob], int, str | None, str]]:
        chunker: Chunker | None = None
        out: list[tuple[list[Blob], int, str | None, str]] = []
        for entry in entries:
            try:
                with self.source.open(entry) as f:
                    data = f.read()
                    changed = self.source.changed(entry, f, len(data))
            except (OSError, VmkeepError) as exc:
                out.append(([], 0, None, str(exc) or type(exc).__name__))
                continue
            if len(data) <= self.cdc["min"]:
                blobs = [self.blob(data)] if data else []
            else:
                chunker = chunker or Chunker.from_config(self.cdc)
                blobs = [self.blob(view) for view in chunker.cut(data)]
            out.append((blobs, len(data), changed, ""))
        return out


class _Run:
    def __init__(self, repo: Repository, source: FileSource, parent: FilePoint | None,
                 workers: int, progress: Progress | None) -> None:
        self.repo, self.source, self.progress = repo, source, progress
        self.prev = {e.path: e for e in parent.entries} if parent is not None else {}
        self.session = repo.write_session()
        self.work = _Worker(repo, source, self.session)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="vmkeep-files")
        self.max_inflight = 4 * workers
        self.inflight: deque[tuple[list[FileEntry], Future[Any]]] = deque()
        self.batch: list[FileEntry] = []
        self.batch_bytes = 0
        self.stats = FileStats()
        self.warnings: list[FileWarning] = []
        self.entries: list[FileEntry] = []
        self.skipped: set[int] = set()
        self.links: dict[tuple[int | None, int | None], int] = {}

    def warn(self, path: str, reason: str, detail: str = "") -> None:
        if len(self.warnings) < MAX_WARNINGS_KEPT:
            self.warnings.append(FileWarning(path, reason, detail))

    def add_blobs(self, blobs: list[Blob], entry: FileEntry) -> None:
        ids = bytearray()
        for blob_id, codec, payload, length in blobs:
            ids += blob_id
            if payload is not None and self.session.add(blob_id, codec, payload, length):
                self.stats.chunks_new += 1
                self.stats.bytes_new += length
        entry.chunk_ids = bytes(ids)
        entry.chunk_lengths = [b[3] for b in blobs]

    def finish_file(self, entry: FileEntry, nread: int, changed: str | None) -> None:
        self.stats.files_read += 1
        self.stats.bytes_read += nread
        if changed:
            self.stats.changed_while_read += 1
            self.warn(_show(entry.path), "changed-while-read", changed)
        entry.size = nread
        if self.progress:
            self.progress(nread)

    def consume(self) -> None:
        entries, future = self.inflight.popleft()
        for entry, (blobs, nread, changed, error) in zip(entries, future.result(), strict=True):
            if error:
                self.unreadable(entry, error)
                continue
            self.add_blobs(blobs, entry)
            self.finish_file(entry, nread, changed)

    def unreadable(self, entry: FileEntry, error: str) -> None:
        self.stats.unreadable += 1
        self.skipped.add(id(entry))
        self.warn(_show(entry.path), "unreadable", error)

    def submit_batch(self) -> None:
        if self.batch:
            self.inflight.append((self.batch, self.pool.submit(self.work.batch, self.batch)))
            self.batch, self.batch_bytes = [], 0
            while len(self.inflight) >= self.max_inflight:
                self.consume()

    def large(self, entry: FileEntry) -> None:
        """Stream one large file: cut here, hash and compress chunks on the pool."""
        chunker = Chunker.from_config(self.repo.config.cdc)
        pending: deque[Future[Blob]] = deque()
        blobs: list[Blob] = []

        def take() -> None:
            blob = pending.popleft().result()
            blobs.append(blob)
            while len(self.inflight) and self.inflight[0][1].done():
                self.consume()

        try:
            with self.source.open(entry) as f:
                nread = 0
                for data in chunker.cut_stream(f):
                    nread += len(data)
                    pending.append(self.pool.submit(self.work.blob, data))
                    if len(pending) >= self.max_inflight:
                        take()
                changed = self.source.changed(entry, f, nread)
        except (OSError, VmkeepError) as exc:
            for fut in pending:
                fut.cancel()
            self.unreadable(entry, str(exc) or type(exc).__name__)
            return
        while pending:
            take()
        self.add_blobs(blobs, entry)
        self.finish_file(entry, nread, changed)

    def entry(self, entry: FileEntry) -> None:
        stats = self.stats
        old = self.prev.get(entry.path)
        same_inode = old is not None and _unchanged(old, entry) and old.ctime_ns is not None
        if self.source.has_xattrs:
            entry.xattrs = old.xattrs if same_inode and old else self.source.read_xattrs(entry)
        if entry.hardlink is not None:
            key = (entry.dev, entry.inode)
            entry.hardlink = self.links.setdefault(key, len(self.entries))
        self.entries.append(entry)
        if entry.type == "dir":
            stats.dirs += 1
            return
        if entry.type == "symlink":
            stats.symlinks += 1
            return
        if entry.type != "file":
            stats.others += 1
            return
        stats.files += 1
        if entry.hardlink is not None and entry.hardlink != len(self.entries) - 1:
            return  # content filled in from the group's first file at the end
        if old is not None and _unchanged(old, entry) and all(
            c in self.repo.index for c in old.chunks()
        ):
            stats.files_unchanged += 1
            entry.chunk_ids, entry.chunk_lengths = old.chunk_ids, old.chunk_lengths
            if self.progress:
                self.progress(entry.size)
            return
        if old is not None and old.type == "file":
            stats.files_changed += 1
        else:
            stats.files_new += 1
        if entry.size > LARGE:
            self.large(entry)
            return
        self.batch.append(entry)
        self.batch_bytes += entry.size
        if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
            self.submit_batch()

    def finish(self) -> list[FileEntry]:
        self.submit_batch()
        while self.inflight:
            self.consume()
        kept: list[FileEntry] = []
        new_row: dict[int, int] = {}
        for i, e in enumerate(self.entries):
            if e.hardlink is not None and e.hardlink != i:
                lead = self.entries[e.hardlink]
                if id(lead) in self.skipped:
                    self.unreadable(e, "hard link of an unreadable file")
                    continue
                e.chunk_ids, e.chunk_lengths, e.size = lead.chunk_ids, lead.chunk_lengths, lead.size
                e.hardlink = new_row[e.hardlink]
            elif id(e) in self.skipped:
                continue
            elif e.hardlink is not None:
                e.hardlink = len(kept)
            new_row[i] = len(kept)
            kept.append(e)
        self.stats.bytes = sum(e.size for e in kept if e.type == "file")
        return kept


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def backup_files(
    repo: Repository,
    source: FileSource,
    parent: FilePoint | None = None,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> FileBackupResult:
    """Back up ``source`` (see the module docstring); ``parent`` enables change detection."""
    require_compiled()
    started = time.monotonic()
    run = _Run(repo, source, parent, workers or max(2, os.cpu_count() or 2), progress)
    try:
        for entry in source.walk(run.warn):
            run.entry(entry)
        entries = run.finish()
        run.stats.bytes_stored = run.session.bytes_stored
        index_key = run.session.commit()
    except BaseException:
        for _, future in run.inflight:
            future.cancel()
        run.session.abort()
        raise
    finally:
        run.pool.shutdown(wait=True, cancel_futures=True)
    run.stats.duration_s = time.monotonic() - started
    return FileBackupResult(entries, run.stats, run.warnings, index_key)
