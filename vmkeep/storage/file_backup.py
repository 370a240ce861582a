"""The file data path: walk a source, reuse unchanged files, chunk (CDC), hash, compress, dedupe.

One call backs up one source tree into a repository and returns its entries; the caller then
publishes the restore point (:func:`vmkeep.storage.file_manifest.save_file_point`).  Blobs go to
the same store as image chunks (same keyed ids, same codec), so identical content deduplicates
across file and image backups.  No Prefect here, and no file-system specifics: the source is any
:class:`FileSource` (local walker, SFTP, SMB — see :mod:`vmkeep.guestfiles.sources`).

Change detection: a file whose previous-point entry has the same type, size, ``mtime_ns``, and —
where both points know them — ``ctime_ns`` and inode, and whose chunks are all still in the
index, reuses that chunk list without being opened (its xattrs too, when the ctime matched).

Sparse files: a large file whose source reports holes (``sparse_layout``; the local source asks
the file system with ``SEEK_DATA``/``SEEK_HOLE``) has only its data ranges read and cut; each hole
of :data:`MIN_HOLE` or more becomes zero runs in its chunk list (``ZERO_ID``, stored nowhere; see
:mod:`vmkeep.storage.file_manifest`), so a 1 TiB ``/var/log/lastlog`` costs what its data costs.
Restores leave those runs as holes.

Per-file problems never fail the run: an unreadable file is left out of the point and reported
(``unreadable``); a file whose size, mtime or ctime differ after reading, or which returned a
different number of bytes than its size, is stored as read and reported
(``changed-while-read``).  Repository errors (target full, unreachable) do fail the run.

Columnar: the walk gives one tuple per entry (:data:`Row`; a source's ``scan`` when it has one,
else its ``walk`` entries), gathered in blocks of :data:`BLOCK_ROWS` into pyarrow arrays; each
block is joined against the previous point by path (a dict built once) and compared column at a
time; unchanged files take their chunk lists (and xattrs) from the previous table with ``take``,
and the new manifest table is assembled from arrays, never from one object per file.

Pipeline: small files are read, cut, hashed and compressed in batches on ``workers`` threads;
large files (over :data:`LARGE`) are read and cut on the calling thread and their chunks hashed
and compressed on the pool.  The calling thread alone feeds the write session.  At most
``2 × workers + 4`` jobs are in flight, each at most :data:`BATCH_BYTES` or one chunk, so memory
stays bounded whatever the tree.  Atomicity: when this returns, the packs and the index are
durable; nothing is a restore point until its manifest is saved.  Nothing is retried here.
"""

from __future__ import annotations

import bisect
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from vmkeep.errors import VmkeepError
from vmkeep.storage.cdc import Chunker, require_compiled
from vmkeep.storage.codec import ZERO_ID
from vmkeep.storage.file_manifest import (
    SCALAR_FIELDS,
    SCHEMA,
    ZERO_RUN_MAX,
    FileEntry,
    FilePoint,
    chunk_list_array,
    table_entries,
)
from vmkeep.storage.index import MasterIndex, id_list
from vmkeep.storage.repository import Repository
from vmkeep.storage.writer import WriteSession

#: Files above this size are streamed chunk by chunk on the calling thread.
LARGE = 16 * 1024 * 1024
#: Holes of a sparse (large) file at least this long are listed as zero runs, never read.
MIN_HOLE = 1024 * 1024
#: A batch of small files holds at most this many bytes or :data:`BATCH_FILES` files.
BATCH_BYTES = 8 * 1024 * 1024
BATCH_FILES = 128
#: Small files queued for reading in one run before the source's reader processes (if it has
#: ``process_reader``) take over from the threads: few changed files never pay their start-up.
PROCESS_AFTER = 4096
#: Walked entries are compared with the previous point this many at a time.
BLOCK_ROWS = 8192
MAX_WARNINGS_KEPT = 1000

Warn = Callable[[str, str, str], None]
Progress = Callable[[int], None]
Blob = tuple[bytes, int, bytes | None, int]  # id, codec, payload (None: known), raw length
#: One walked entry: the values of :data:`~vmkeep.storage.file_manifest.SCALAR_FIELDS` in order
#: (``FileEntry(*row)`` builds the entry); ``hardlink`` is -1 for a file with ``nlink > 1``.
Row = tuple[Any, ...]
_ROW_TYPES = [SCHEMA.field(name).type for name in SCALAR_FIELDS]
_XATTRS = SCHEMA.field("xattrs").type


class FileSource(Protocol):
    """What the data path needs from a source tree (contracts in :mod:`vmkeep.guestfiles`).

    A source may also offer ``scan(warn) -> Iterator[Row]``: the same entries as ``walk`` as
    :data:`Row` tuples (cheaper), and ``read_small(entry, want_xattrs) -> (data, changed,
    xattrs)``: ``open`` + ``read`` + ``changed`` (+ ``read_xattrs``) in one call; the data path
    prefers them.  ``process_reader(key, level, cdc)`` (or ``None``) and ``process_item(entry,
    want_xattrs)`` let a large run read its small files in worker processes (see
    :data:`PROCESS_AFTER` and :mod:`vmkeep.guestfiles.proc_reader`).  ``sparse_layout(f) ->
    (size, [(start, length), …]) | None``, given a file ``open`` returned, says where its data
    is when it has holes (``None``: read it whole); the holes are then not read.
    """

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


def source_rows(source: FileSource, warn: Warn) -> Iterator[Row]:
    """The source's entries as :data:`Row` tuples (its ``scan`` if it has one)."""
    scan = getattr(source, "scan", None)
    if scan is not None:
        yield from scan(warn)
        return
    for e in source.walk(warn):
        yield tuple(getattr(e, name) for name in SCALAR_FIELDS)


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
    bytes_sparse: int = 0  # holes of sparse files: listed as zero runs, never read
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
    """The new point's rows (:attr:`table`, in :data:`SCHEMA`), stats and warnings."""

    table: pa.Table
    stats: FileStats
    warnings: list[FileWarning] = field(default_factory=list)
    index_key: str | None = None
    _entries: list[FileEntry] | None = field(default=None, repr=False)

    @property
    def entries(self) -> list[FileEntry]:
        """The rows as :class:`FileEntry` objects (built on first use)."""
        if self._entries is None:
            self._entries = table_entries(self.table)
        return self._entries

    @property
    def partial(self) -> bool:
        return self.stats.unreadable > 0


#: What a worker returns per file: blobs, bytes read, changed-while-read reason, error, xattrs.
_Read = tuple[list[Blob], int, str | None, str, list[tuple[bytes, bytes]] | None]


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

    def batch(self, items: list[tuple[int, FileEntry, bool]]) -> list[_Read]:
        chunker: Chunker | None = None
        out: list[_Read] = []
        read_small = getattr(self.source, "read_small", None)
        for _, entry, want_xattrs in items:
            xattrs = None
            try:
                if read_small is not None:
                    data, changed, xattrs = read_small(entry, want_xattrs)
                else:
                    xattrs = self.source.read_xattrs(entry) if want_xattrs else None
                    with self.source.open(entry) as f:
                        data = f.read()
                        changed = self.source.changed(entry, f, len(data))
            except (OSError, VmkeepError) as exc:
                if want_xattrs and xattrs is None:
                    xattrs = self.source.read_xattrs(entry)
                out.append(([], 0, None, str(exc) or type(exc).__name__, xattrs))
                continue
            if len(data) <= self.cdc["min"]:
                blobs = [self.blob(data)] if data else []
            else:
                chunker = chunker or Chunker.from_config(self.cdc)
                blobs = [self.blob(view) for view in chunker.cut(data)]
            out.append((blobs, len(data), changed, "", xattrs))
        return out


class _Previous:
    """The parent point, columnar: path → row, the compared columns, reusable chunk lists."""

    def __init__(self, parent: FilePoint | None, index: MasterIndex) -> None:
        table = parent.table if parent is not None else SCHEMA.empty_table()
        self.table = table.combine_chunks()
        self.row = dict(zip(table.column("path").to_pylist(), range(table.num_rows), strict=True))
        self.cols = {
            name: self.table.column(name).chunk(0) if self.table.column(name).num_chunks
            else pa.array([], SCHEMA.field(name).type)
            for name in ("type", "size", "mtime_ns", "ctime_ns", "inode", "chunks",
                         "chunk_lengths", "xattrs")
        }
        # Rows whose chunks are not all in the index any more (a pack went missing) are read;
        # zero runs are stored nowhere and always present.
        chunks = self.cols["chunks"]
        ids = id_list(chunks.flatten())
        present = index.has_many(ids)
        if not all(present):
            present = [p or b == ZERO_ID for b, p in zip(ids, present, strict=True)]
        self.ok: pa.Array | None = None
        if not all(present):
            missing = pc.filter(pc.list_parent_indices(chunks), pc.invert(pa.array(present)))
            self.ok = pc.invert(pc.is_in(pa.array(range(len(chunks)), pa.int64()),
                                         value_set=pc.unique(missing)))


def _or_unknown(old: pa.Array, new: pa.Array) -> pa.Array:
    """Equal, or unknown on either side (NULL)."""
    return pc.or_kleene(pc.or_kleene(pc.is_null(old), pc.is_null(new)), pc.equal(old, new))


class _Run:
    def __init__(self, repo: Repository, source: FileSource, parent: FilePoint | None,
                 workers: int, progress: Progress | None) -> None:
        self.repo, self.source, self.progress = repo, source, progress
        self.prev = _Previous(parent, repo.index)
        self.session = repo.write_session()
        self.work = _Worker(repo, source, self.session)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="vmkeep-files")
        self.max_inflight = 2 * workers + 4
        self.inflight: deque[tuple[list[tuple[int, FileEntry, bool]], Future[Any]]] = deque()
        self.batch: list[tuple[int, FileEntry, bool]] = []
        self.batch_bytes = 0
        self.stats = FileStats()
        self.warnings: list[FileWarning] = []
        self.rows = 0  # rows walked so far
        self.blocks: list[pa.RecordBatch] = []
        self.pidx: list[pa.Array] = []  # previous row of each row (NULL: none)
        self.unchanged: list[pa.Array] = []  # file reuses the previous chunk lists
        self.reuse_x: list[pa.Array] = []  # xattrs taken from the previous point
        self.content: dict[int, tuple[bytes, list[int], int]] = {}  # row → ids, lengths, size
        self.xattrs: dict[int, list[tuple[bytes, bytes]] | None] = {}  # row → xattrs read
        self.dropped: set[int] = set()
        self.links: dict[tuple[Any, Any], int] = {}  # (dev, inode) → first row of the group
        self.follows: dict[int, int] = {}  # row → first row of its hard-link group
        self.pending_progress = 0
        self.queued = 0  # small files submitted for reading
        self.procs: Any = None  # the source's reader processes, once started
        self.proc_ok = callable(getattr(source, "process_reader", None))

    def warn(self, path: str, reason: str, detail: str = "") -> None:
        if len(self.warnings) < MAX_WARNINGS_KEPT:
            self.warnings.append(FileWarning(path, reason, detail))

    def advance(self, nbytes: int, force: bool = False) -> None:
        if self.progress is None:
            return
        self.pending_progress += nbytes
        if force or self.pending_progress >= 1 << 22:
            self.progress(self.pending_progress)
            self.pending_progress = 0

    # -- reading ---------------------------------------------------------------------------
    def add_blobs(self, row: int, blobs: list[Blob], nread: int) -> None:
        ids = bytearray()
        for blob_id, codec, payload, length in blobs:
            ids += blob_id
            if payload is not None and self.session.add(blob_id, codec, payload, length):
                self.stats.chunks_new += 1
                self.stats.bytes_new += length
        self.content[row] = (bytes(ids), [b[3] for b in blobs], nread)

    def finish_file(self, entry: FileEntry, nread: int, changed: str | None, holes: int = 0
                    ) -> None:
        self.stats.files_read += 1
        self.stats.bytes_read += nread - holes
        self.stats.bytes_sparse += holes
        if changed:
            self.stats.changed_while_read += 1
            self.warn(_show(entry.path), "changed-while-read", changed)
        self.advance(nread)

    def consume(self) -> None:
        items, future = self.inflight.popleft()
        for (row, entry, want_x), (blobs, nread, changed, error, xattrs) in zip(
            items, future.result(), strict=True
        ):
            if want_x:
                self.xattrs[row] = xattrs
            if error:
                self.unreadable(row, entry, error)
                continue
            self.add_blobs(row, blobs, nread)
            self.finish_file(entry, nread, changed)

    def unreadable(self, row: int, entry: FileEntry, error: str) -> None:
        self.stats.unreadable += 1
        self.dropped.add(row)
        self.warn(_show(entry.path), "unreadable", error)

    def submit_batch(self) -> None:
        if self.batch:
            self.queued += len(self.batch)
            if self.proc_ok and self.procs is None and self.queued > PROCESS_AFTER:
                repo = self.repo
                self.procs = self.source.process_reader(  # type: ignore[attr-defined]
                    repo.hasher.key, repo.codec.level, dict(repo.config.cdc))
                self.proc_ok = self.procs is not None
            if self.procs is not None:
                item = self.source.process_item  # type: ignore[attr-defined]
                future = self.procs.submit([item(e, want) for _, e, want in self.batch])
            else:
                future = self.pool.submit(self.work.batch, self.batch)
            self.inflight.append((self.batch, future))
            self.batch, self.batch_bytes = [], 0
            while len(self.inflight) >= self.max_inflight:
                self.consume()

    def large(self, row: int, entry: FileEntry) -> None:
        """Stream one large file: cut here, hash and compress chunks on the pool.  The holes of
        a sparse file (as the source's ``sparse_layout`` reports them) are listed as zero runs,
        never read; its data ranges are cut one by one."""
        chunker = Chunker.from_config(self.repo.config.cdc)
        pending: deque[Future[Blob]] = deque()
        blobs: list[Blob] = []

        def take() -> None:
            blob = pending.popleft().result()
            blobs.append(blob)
            while len(self.inflight) and self.inflight[0][1].done():
                self.consume()

        def cut(stream: Any) -> int:
            n = 0
            for data in chunker.cut_stream(stream):
                n += len(data)
                pending.append(self.pool.submit(self.work.blob, data))
                if len(pending) >= self.max_inflight:
                    take()
            return n

        sparse_layout = getattr(self.source, "sparse_layout", None)
        holes = 0
        try:
            with self.source.open(entry) as f:
                layout = sparse_layout(f) if sparse_layout is not None else None
                if layout is None:
                    nread = cut(f)
                else:
                    nread = 0
                    for start, length, is_data in _runs(*layout):
                        if is_data:
                            f.seek(start)
                            got = cut(_Window(f, length))
                            nread += got
                            if got < length:  # the file shrank while read
                                break
                        else:
                            for run in range(0, length, ZERO_RUN_MAX):
                                pending.append(_done((ZERO_ID, 0, None,
                                                      min(ZERO_RUN_MAX, length - run))))
                            nread += length
                            holes += length
                changed = self.source.changed(entry, f, nread)
        except (OSError, VmkeepError) as exc:
            for fut in pending:
                fut.cancel()
            self.unreadable(row, entry, str(exc) or type(exc).__name__)
            return
        while pending:
            take()
        self.add_blobs(row, blobs, nread)
        self.finish_file(entry, nread, changed, holes)

    # -- one block of walked rows ----------------------------------------------------------
    def block(self, rows: list[Row]) -> None:
        base, n = self.rows, len(rows)
        self.rows += n
        cols = list(zip(*rows, strict=True))
        arrays = [pa.array(c, t) for c, t in zip(cols, _ROW_TYPES, strict=True)]
        batch = pa.RecordBatch.from_arrays(arrays, names=SCALAR_FIELDS)
        self.blocks.append(batch)
        kinds = Counter(cols[1])
        stats = self.stats
        stats.files += kinds["file"]
        stats.dirs += kinds["dir"]
        stats.symlinks += kinds["symlink"]
        stats.others += n - kinds["file"] - kinds["dir"] - kinds["symlink"]

        get = self.prev.row.get
        pidx = pa.array([get(p) for p in cols[0]], pa.int64())
        self.pidx.append(pidx)
        prev = self.prev.cols
        kind = batch.column("type")
        ptype = pc.take(prev["type"], pidx)
        ctime_old = pc.take(prev["ctime_ns"], pidx)
        same = pc.and_kleene(pc.equal(ptype, kind),
                             pc.equal(pc.take(prev["size"], pidx), batch.column("size")))
        same = pc.and_kleene(same, pc.equal(pc.take(prev["mtime_ns"], pidx),
                                            batch.column("mtime_ns")))
        same = pc.and_kleene(same, _or_unknown(ctime_old, batch.column("ctime_ns")))
        same = pc.and_kleene(same, _or_unknown(pc.take(prev["inode"], pidx),
                                               batch.column("inode")))
        same = pc.fill_null(same, False)
        is_file = pc.equal(kind, "file")
        unchanged = pc.and_(same, is_file)
        if self.prev.ok is not None:
            unchanged = pc.and_(unchanged, pc.fill_null(pc.take(self.prev.ok, pidx), False))

        # hard links: the first row of a (dev, inode) group is read (or reused), the rest follow
        follower = None
        links = batch.column("hardlink")
        if links.null_count < n:
            follow = []
            for i in pc.indices_nonzero(pc.is_valid(links)).to_pylist():
                row = rows[i]
                lead = self.links.setdefault((row[10], row[9]), base + i)
                if lead != base + i and row[1] == "file":
                    self.follows[base + i] = lead
                    follow.append(i)
            if follow:
                mask = [False] * n
                for i in follow:
                    mask[i] = True
                follower = pa.array(mask)
                unchanged = pc.and_(unchanged, pc.invert(follower))
        self.unchanged.append(unchanged)
        to_read = pc.and_(is_file, pc.invert(unchanged))
        if follower is not None:
            to_read = pc.and_(to_read, pc.invert(follower))

        nunchanged = pc.sum(unchanged).as_py() or 0
        stats.files_unchanged += nunchanged
        if nunchanged:
            self.advance(pc.sum(pc.filter(batch.column("size"), unchanged)).as_py() or 0)
        read_idx = pc.indices_nonzero(to_read).to_pylist()
        was_file = pc.fill_null(pc.equal(ptype, "file"), False)
        nchanged = pc.sum(pc.and_(to_read, was_file)).as_py() or 0
        stats.files_changed += nchanged
        stats.files_new += len(read_idx) - nchanged
        if follower is not None:  # a hard link's further names, counted as their own rows
            nfollow = pc.sum(follower).as_py() or 0
            nsame = pc.sum(pc.and_(follower, same)).as_py() or 0
            nwas = pc.sum(pc.and_(pc.and_(follower, pc.invert(same)), was_file)).as_py() or 0
            stats.files_unchanged += nsame
            stats.files_changed += nwas
            stats.files_new += nfollow - nsame - nwas

        want_x = self.source.has_xattrs
        reuse_x = pc.and_(same, pc.is_valid(ctime_old))
        self.reuse_x.append(reuse_x)
        if want_x:
            read_set = set(read_idx)
            for i in pc.indices_nonzero(pc.invert(reuse_x)).to_pylist():
                if i not in read_set:
                    self.xattrs[base + i] = self.source.read_xattrs(FileEntry(*rows[i]))
        for i in read_idx:
            entry = FileEntry(*rows[i])
            if entry.size > LARGE:
                if want_x:
                    self.xattrs[base + i] = self.source.read_xattrs(entry)
                self.large(base + i, entry)
                continue
            self.batch.append((base + i, entry, want_x))
            self.batch_bytes += entry.size
            if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
                self.submit_batch()

    # -- the new point's table -------------------------------------------------------------
    def finish(self) -> pa.Table:
        self.submit_batch()
        while self.inflight:
            self.consume()
        self.advance(0, force=True)
        n = self.rows
        scalars = pa.Table.from_batches(self.blocks, schema=pa.schema(
            [SCHEMA.field(name) for name in SCALAR_FIELDS])).combine_chunks()
        pidx = _concat(self.pidx, pa.int64())
        unchanged = _concat(self.unchanged, pa.bool_())
        reuse_x = _concat(self.reuse_x, pa.bool_())

        # hard-link followers take their group's content (or go with an unreadable first file)
        for row, lead in self.follows.items():
            if lead in self.dropped:
                self.stats.unreadable += 1
                self.dropped.add(row)
                path = scalars.column("path")[row].as_py()
                self.warn(_show(path), "unreadable", "hard link of an unreadable file")
        read_rows = sorted(self.content)
        # content source per row: previous point (unchanged) / read now / empty list
        nu = pc.sum(unchanged).as_py() or 0
        src = pa.array([nu + len(read_rows)] * n, pa.int64())
        src = pc.replace_with_mask(src, unchanged, pa.array(range(nu), pa.int64()))
        size = scalars.column("size").combine_chunks()
        if read_rows:
            read_mask = _mask(n, read_rows)
            src = pc.replace_with_mask(src, read_mask,
                                       pa.array(range(nu, nu + len(read_rows)), pa.int64()))
            size = pc.replace_with_mask(
                size, read_mask, pa.array([self.content[r][2] for r in read_rows], pa.int64()))
        live_follows = {r: lead for r, lead in self.follows.items() if r not in self.dropped}
        if live_follows:
            src_l, size_l = src.to_pylist(), size.to_pylist()
            for row, lead in live_follows.items():
                src_l[row], size_l[row] = src_l[lead], size_l[lead]
            src, size = pa.array(src_l, pa.int64()), pa.array(size_l, pa.int64())
        old_rows = pc.filter(pidx, unchanged)
        new_ids = b"".join(self.content[r][0] for r in read_rows)
        new_chunks = chunk_list_array(new_ids, [len(self.content[r][1]) for r in read_rows] + [0])
        new_lengths = pa.array([self.content[r][1] for r in read_rows] + [[]],
                               pa.list_(pa.int32()))
        chunks = pa.concat_arrays([pc.take(self.prev.cols["chunks"], old_rows),
                                   new_chunks]).take(src)
        lengths = pa.concat_arrays([pc.take(self.prev.cols["chunk_lengths"], old_rows),
                                    new_lengths]).take(src)
        xattrs = self.xattr_column(n, pidx, reuse_x)
        hardlink = scalars.column("hardlink").combine_chunks()
        gone = sorted(self.dropped)
        if hardlink.null_count < n:
            link_rows = pc.indices_nonzero(pc.is_valid(hardlink)).to_pylist()
            values = []
            for row in link_rows:
                lead = self.follows.get(row, row)
                values.append(lead - bisect.bisect_left(gone, lead))
            hardlink = pc.replace_with_mask(hardlink, _mask(n, link_rows),
                                            pa.array(values, pa.int64()))
        columns = {name: scalars.column(name) for name in SCALAR_FIELDS}
        columns.update(size=size, hardlink=hardlink, xattrs=xattrs, chunks=chunks,
                       chunk_lengths=lengths)
        table = pa.Table.from_arrays([columns[name] for name in SCHEMA.names], schema=SCHEMA)
        if self.dropped:
            table = table.filter(pc.invert(_mask(n, gone)))
        files = pc.equal(table.column("type"), "file")
        self.stats.bytes = pc.sum(pc.filter(table.column("size"), files)).as_py() or 0
        return table

    def xattr_column(self, n: int, pidx: pa.Array, reuse_x: pa.Array) -> pa.Array:
        if not self.source.has_xattrs:
            return pa.nulls(n, _XATTRS)
        new_rows = pc.indices_nonzero(pc.invert(reuse_x)).to_pylist()
        values = []
        for row in new_rows:
            x = self.xattrs.get(row)
            values.append(None if x is None else [{"name": k, "value": v} for k, v in x])
        nr = pc.sum(reuse_x).as_py() or 0
        src = pa.array([0] * n, pa.int64())
        src = pc.replace_with_mask(src, reuse_x, pa.array(range(nr), pa.int64()))
        src = pc.replace_with_mask(src, pc.invert(reuse_x),
                                   pa.array(range(nr, nr + len(new_rows)), pa.int64()))
        old = pc.take(self.prev.cols["xattrs"], pc.filter(pidx, reuse_x))
        return pa.concat_arrays([old, pa.array(values, _XATTRS)]).take(src)


class _Window:
    """At most ``length`` bytes of ``f`` from where it stands (one data range of a sparse file),
    for the chunker's ``readinto``."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self.f, self.left = f, length

    def readinto(self, buf: memoryview) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(buf)
        n = self.f.readinto(view[: self.left] if len(view) > self.left else view) or 0  # type: ignore[attr-defined]
        self.left -= n
        return n


def _runs(size: int, data: list[tuple[int, int]]) -> Iterator[tuple[int, int, bool]]:
    """``(start, length, is_data)`` runs tiling ``[0, size)`` from a file's data ranges
    ``(start, length)`` (in order, not overlapping): a hole shorter than :data:`MIN_HOLE` is
    read with its neighbours (a zero run per small gap would cost more than reading it)."""
    merged: list[list[int]] = []
    for start, length in data:
        start, end = max(start, merged[-1][1] if merged else 0), min(start + length, size)
        if end <= start:
            continue
        if merged and start - merged[-1][1] < MIN_HOLE:
            merged[-1][1] = end
        else:
            merged.append([0 if not merged and start < MIN_HOLE else start, end])
    if merged and size - merged[-1][1] < MIN_HOLE:
        merged[-1][1] = size
    pos = 0
    for start, end in merged:
        if start > pos:
            yield pos, start - pos, False
        yield start, end - start, True
        pos = end
    if size > pos:
        yield pos, size - pos, False


def _done(blob: Blob) -> Future[Blob]:
    future: Future[Blob] = Future()
    future.set_result(blob)
    return future


def default_workers() -> int:
    """Reader threads: 3 per core (at least 4), so file reads waiting on the disk overlap the
    hashing and compression of others (2 per core left a 2-core machine idle on I/O)."""
    return min(32, max(4, 3 * (os.cpu_count() or 2)))


def _concat(parts: list[pa.Array], kind: pa.DataType) -> pa.Array:
    return pa.concat_arrays(parts) if parts else pa.array([], kind)


def _mask(n: int, rows: list[int]) -> pa.Array:
    mask = [False] * n
    for r in rows:
        mask[r] = True
    return pa.array(mask, pa.bool_())


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
    run = _Run(repo, source, parent, workers or default_workers(), progress)
    try:
        rows: list[Row] = []
        for row in source_rows(source, run.warn):
            rows.append(row)
            if len(rows) >= BLOCK_ROWS:
                run.block(rows)
                rows = []
        if rows:
            run.block(rows)
        table = run.finish()
        run.stats.bytes_stored = run.session.bytes_stored
        index_key = run.session.commit()
    except BaseException:
        for _, future in run.inflight:
            future.cancel()
        run.session.abort()
        raise
    finally:
        run.pool.shutdown(wait=True, cancel_futures=True)
        if run.procs is not None:
            run.procs.close()
    run.stats.duration_s = time.monotonic() - started
    return FileBackupResult(table, run.stats, run.warnings, index_key)
