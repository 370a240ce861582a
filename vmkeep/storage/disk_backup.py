"""The image data path: read a disk, chunk, fingerprint, hash, compress, dedupe, write.

One call backs up one disk (or a whole raw image) into a repository and returns its chunk table;
:func:`commit_point` then publishes the restore point.  No Prefect here: tasks wrap these calls.

Modes, decided per disk by a planner above this module (a :class:`~vmkeep.storage.read_plan.
ReadPlan`: ``vmkeep.vsphere.cbt.plan_disk`` for VM disks, ``read_plan.image_plan`` for images),
executed here as planned and recorded in the restore point:

``full``  no usable previous restore point: every chunk is read, hashed and (when new) stored.
          With ``allocated`` extents (thin disks, CBT ``changeId="*"``) only those are read; the
          rest is recorded as zeros.
``scan``  a previous point of the same disk size exists: every chunk is read, but a chunk whose
          xxh3 matches the previous point's at the same offset is neither hashed, compressed nor
          written.
``cbt``   a previous point plus a list of changed extents: only chunks touching a changed
          extent are read; every other chunk is taken from the previous point.  The result is
          still a full logical image.

In every mode a chunk wholly inside the plan's ``zeroed`` ranges (the guest's swap, see
:mod:`vmkeep.disks.swap`) that the mode would read is recorded as zeros instead, never read;
one the mode takes from the previous point still is.

Compression units (repository version 4): the new pieces of a frame are compressed together
as one zstd frame (:class:`Unit`, one payload in a pack, one index entry per piece) at the
level :class:`LevelPolicy` chooses.  Each new piece is *claimed* by the first frame that cuts
it (the workers run several frames at once), so a piece lands in exactly one unit and no unit
carries bytes another already stores; a claimed piece is stored with its frame's unit even if
an identical frame finished first.

Pipeline: ``workers`` threads read (``pread``), fingerprint, hash and compress chunks (blake3,
xxhash and zstd release the GIL); at most ``INFLIGHT_PER_WORKER × workers`` chunks are in flight;
the calling thread consumes results in order and feeds the write session, which uploads packs on
its own threads.  Memory stays bounded by ``(INFLIGHT_PER_WORKER × workers) × 2 chunks`` (a
chunk and its encoding) plus two packs, whatever the disk size.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, BinaryIO, Protocol

from vmkeep import clock
from vmkeep.errors import InputError
from vmkeep.storage.cdc import Chunker, require_compiled
from vmkeep.storage.cdc_frames import frame_cuts
from vmkeep.storage.codec import (
    CODEC_RAW,
    CODEC_RECIPE,
    ZERO_ID,
    encode_recipe,
    keep_freed_buffers,
)
from vmkeep.storage.manifest import ChunkTable, DiskInfo, RestorePoint
from vmkeep.storage.rate_limit import Pacer
from vmkeep.storage.read_plan import ReadPlan, image_plan
from vmkeep.storage.repository import Repository

Extent = tuple[int, int]
#: chunks in flight per worker thread (read, being processed, or done and waiting for the
#: ordered consumer)
INFLIGHT_PER_WORKER = 8
#: a new content-defined piece of a frame: (id, codec, payload, raw length, zstd level); a raw
#: payload may be a view of the frame's bytes
Piece = tuple[bytes, int, bytes | memoryview, int, int]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Unit:
    """The new pieces of one frame compressed together (repository version 4): ``members`` =
    ``(piece id, offset in the unit, length)`` in frame order, ``payload`` the zstd frame of
    their bytes joined (``length`` bytes decoded), at ``level``."""

    members: list[tuple[bytes, int, int]]
    payload: bytes
    length: int
    level: int


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...


@dataclass
class DiskStats:
    bytes_read: int = 0
    bytes_new: int = 0
    bytes_stored: int = 0
    chunks: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    chunks_zero: int = 0
    #: content-defined pieces of new frames stored (repository version 2), and their raw bytes
    pieces_new: int = 0
    bytes_pieces_new: int = 0
    #: compression units stored (repository version 4): payloads holding ``pieces_new``
    units_new: int = 0
    #: bytes read before new frames to place their cut points (repository version 3), beyond
    #: ``bytes_read``
    bytes_lookback: int = 0
    #: bytes of chunks the plan's ``zeroed`` ranges recorded as zeros without reading them
    bytes_excluded: int = 0
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class DiskResult:
    info: DiskInfo
    chunks: ChunkTable
    stats: DiskStats
    index_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_pread(source: Readable | BinaryIO) -> Callable[[int, int], bytes]:
    """A thread-safe ``pread(offset, length)`` over any seekable binary file-like."""
    pread = getattr(source, "pread", None)
    if callable(pread):
        return pread
    fileno = getattr(source, "fileno", None)
    if callable(fileno):
        try:
            fd = fileno()
            os.fstat(fd)
        except (OSError, ValueError):
            pass
        else:
            return lambda offset, length: os.pread(fd, length, offset)
    lock = threading.Lock()

    def locked(offset: int, length: int) -> bytes:
        with lock:
            source.seek(offset)
            return source.read(length)

    return locked


def paced(
    pread: Callable[[int, int], bytes], limit: Pacer | None
) -> Callable[[int, int], bytes]:
    """``pread`` booking each read's length with ``limit`` before issuing it (unchanged
    without a limit)."""
    if limit is None:
        return pread

    def paced_pread(offset: int, length: int) -> bytes:
        limit.take(length)
        return pread(offset, length)

    return paced_pread


def _contains(ranges: Iterable[range]) -> Callable[[int], bool]:
    """Whether a chunk number is in one of ``ranges`` (sorted, disjoint chunk-number ranges)."""
    import bisect

    spans = [(r.start, r.stop) for r in ranges]
    starts = [start for start, _ in spans]

    def contains(chunk: int) -> bool:
        at = bisect.bisect_right(starts, chunk) - 1
        return at >= 0 and chunk < spans[at][1]

    return contains


def _in_ranges(ranges: Iterable[range], chunk_size: int) -> Callable[[int], bool]:
    """Whether the chunk holding the byte just before ``offset`` is in one of ``ranges``
    (sorted, disjoint chunk-number ranges)."""
    contains = _contains(ranges)
    return lambda offset: contains((offset - 1) // chunk_size)


def chunks_within(extents: Iterable[Extent], size: int, chunk_size: int) -> list[range]:
    """Sorted, disjoint ranges of the chunk numbers lying wholly inside ``extents`` (adjacent
    extents count as one; the disk's short last chunk ends at ``size``)."""
    merged: list[list[int]] = []
    for start, end in sorted((max(0, o), min(size, o + n)) for o, n in extents if n > 0):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    nchunks = (size + chunk_size - 1) // chunk_size
    out: list[range] = []
    for start, end in merged:
        first = -(-start // chunk_size)
        stop = nchunks if end >= size else end // chunk_size
        if first < stop:
            out.append(range(first, stop))
    return out


def subtract_ranges(ranges: Iterable[range], minus: Sequence[range]) -> list[range]:
    """``ranges`` (sorted, disjoint) without the chunk numbers in ``minus`` (sorted, disjoint)."""
    out: list[range] = []
    for r in ranges:
        start = r.start
        for m in minus:
            if m.stop <= start or m.start >= r.stop:
                continue
            if m.start > start:
                out.append(range(start, m.start))
            start = max(start, m.stop)
        if start < r.stop:
            out.append(range(start, r.stop))
    return out


def chunks_touching(extents: Iterable[Extent], size: int, chunk_size: int) -> Iterator[range]:
    """Merge extents into sorted, disjoint ranges of chunk numbers that overlap them."""
    spans = sorted(
        (max(0, off) // chunk_size, (min(size, off + length) - 1) // chunk_size + 1)
        for off, length in extents
        if length > 0 and off < size
    )
    cur_start = cur_end = -1
    for start, end in spans:
        if start <= cur_end:
            cur_end = max(cur_end, end)
            continue
        if cur_end > cur_start:
            yield range(cur_start, cur_end)
        cur_start, cur_end = start, end
    if cur_end > cur_start:
        yield range(cur_start, cur_end)


def _union(a: Iterable[range], b: Iterable[range]) -> list[range]:
    out: list[range] = []
    for r in sorted([*a, *b], key=lambda r: r.start):
        if out and r.start <= out[-1].stop:
            out[-1] = range(out[-1].start, max(out[-1].stop, r.stop))
        elif len(r):
            out.append(r)
    return out


@dataclass(frozen=True)
class ChunkReads:
    """A read plan in chunk numbers (sorted, disjoint ranges): ``mode_reads`` — the chunks its
    mode reads (whole chunks touching its extents; all of them without); ``excluded`` — those of
    them lying wholly inside its ``zeroed`` areas, recorded as zeros unread; ``reads`` — the rest,
    what is really read."""

    mode_reads: list[range]
    excluded: list[range]
    reads: list[range]


def chunk_reads(plan: ReadPlan, size: int, chunk_size: int) -> ChunkReads:
    """What ``plan`` reads of a disk of ``size`` bytes, in ``chunk_size`` chunks."""
    everything = [range((size + chunk_size - 1) // chunk_size)]
    mode = everything if plan.extents is None else list(
        chunks_touching(plan.extents, size, chunk_size))
    excluded = subtract_ranges(chunks_within(plan.zeroed, size, chunk_size),
                               subtract_ranges(everything, mode)) if plan.zeroed else []
    return ChunkReads(mode, excluded, subtract_ranges(mode, excluded) if excluded else mode)


def zeroed_after(
    plan: ReadPlan, size: int, chunk_size: int, previous: Iterable[Sequence[int]] = ()
) -> list[list[int]]:
    """The chunk ranges (``[[start, end], …]``) whose recorded zeros may differ from the disk
    once ``plan`` is executed: the chunks its ``zeroed`` areas kept from being read, and those of
    ``previous`` (the base point's record) it did not read again.  A ``full`` plan has no base:
    only its own."""
    planned = chunk_reads(plan, size, chunk_size)
    kept: list[range] = []
    if plan.base is not None:
        earlier = _union([], (range(int(a), int(b)) for a, b in previous))
        kept = subtract_ranges(earlier, planned.mode_reads)
    return [[r.start, r.stop] for r in _union(planned.excluded, kept)]


class LevelPolicy:
    """Chooses the zstd level from where the data path spends its time (thread-safe).

    Workers report the seconds they spent reading (``pread``) and working (fingerprint, hash,
    cut, compress).  Every :attr:`window` chunks the level becomes :attr:`high` when reading
    took more than :attr:`ratio` times the work — the workers mostly wait for data (a slow
    disk, NBD or network source), so the CPU has room for stronger compression — else the
    repository's level (CPU-bound: exactly what it compressed with before).  Decoding needs no
    record of the level; each zstd blob's level is recorded in its pack's entry (see
    :mod:`vmkeep.storage.pack`), and the blobs tried at each level are counted for the restore
    point (``zstd_levels``).
    """

    def __init__(self, base: int, high: int = 3, window: int = 32, ratio: float = 2.0) -> None:
        self.base, self.high = base, max(base, high)
        self.window, self.ratio = window, ratio
        self.level = base
        self.blobs: dict[int, int] = {}
        self._read = self._work = 0.0
        self._chunks = 0
        self._lock = threading.Lock()

    def observe(self, read_s: float, work_s: float) -> None:
        with self._lock:
            self._read += read_s
            self._work += work_s
            self._chunks += 1
            if self._chunks >= self.window:
                io_bound = self._read > self.ratio * self._work
                self.level = self.high if io_bound else self.base
                self._read = self._work = 0.0
                self._chunks = 0

    def compressed(self, level: int) -> None:
        with self._lock:
            self.blobs[level] = self.blobs.get(level, 0) + 1


class _ChunkWork:
    """Per-chunk work run on pool threads: read, fingerprint, reuse / zero / hash / compress."""

    def __init__(
        self,
        repo: Repository,
        pread: Callable[[int, int], bytes],
        known: Any,
        parent: ChunkTable | None,
    ) -> None:
        self.hasher = repo.hasher
        self.codec = repo.codec
        self.pread = pread
        self.known = known
        self.parent = parent
        self.index = repo.index
        self._zeros: dict[int, tuple[bytes, bytes]] = {}
        self.policy = LevelPolicy(repo.codec.level)
        self.image_cdc = repo.config.image_cdc
        #: version 4: a frame's new pieces go into one compression unit
        self.units = repo.config.units and self.image_cdc is not None
        #: new pieces claimed by a frame in flight (units: each stored in one unit only)
        self.claimed: set[bytes] = set()
        self.lookback = (self.image_cdc or {}).get("lookback", 0)
        #: version 5: a frame cut into pieces is identified by its recipe, not its bytes
        self.recipe_ids = repo.config.recipe_ids and self.image_cdc is not None
        self.lookback_read = 0
        #: whether the plan reads the bytes just before ``offset`` (the lookback may only read
        #: what the plan reads: an NFC export streams only planned areas, CBT reads only
        #: changed frames); set by :func:`backup_disk`
        self.planned_before: Callable[[int], bool] = lambda offset: True
        self._count = threading.Lock()
        self._local = threading.local()  # one FastCDC chunker per pool thread
        if self.image_cdc is not None:
            require_compiled()

    def _zero(self, length: int) -> tuple[bytes, bytes]:
        zero = self._zeros.get(length)
        if zero is None:
            data = bytes(length)
            zero = self._zeros.setdefault(length, (data, self.hasher.fingerprint(data)))
        return zero

    def _chunker(self) -> Chunker:
        chunker: Chunker | None = getattr(self._local, "chunker", None)
        if chunker is None:
            assert self.image_cdc is not None
            chunker = self._local.chunker = Chunker.from_config(self.image_cdc)
        return chunker

    def _claim(self, piece_id: bytes) -> bool:
        """Claim a new piece for the calling frame's unit: False when it is stored or claimed
        by another frame already."""
        if self.known(piece_id):
            return False
        with self._count:
            if piece_id in self.claimed:
                return False
            self.claimed.add(piece_id)
            return True

    def _recipe(self, data: bytes, offset: int) -> tuple[bytes, list[Piece | Unit]] | None:
        """Cut a new frame at ``offset`` into content-defined pieces: ``(recipe payload, new
        pieces encoded)`` or ``None`` when the frame is a single piece (then stored whole)."""
        listed, distinct = self._cut(data, offset)
        if len(listed) < 2:  # one piece: the frame, stored whole (same id: a claim holds)
            if self.units:
                for piece_id, _, _ in distinct:
                    self._claim(piece_id)
            return None
        return encode_recipe(listed), self._store(memoryview(data), distinct)

    def _cut(
        self, data: bytes, offset: int
    ) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int, int]]]:
        """The frame at ``offset`` cut into content-defined pieces and each piece hashed:
        ``(listed, distinct)`` — every piece as ``(id, length)`` in frame order (all-zero pieces as
        ``ZERO_ID``, not stored), and the pieces that may need storing as ``(id, start, end)``:
        non-zero, first occurrence in the frame (:meth:`_store` skips those already stored).
        In a version-3 or newer repository the chunker starts ``lookback`` bytes before the
        frame (read here: the only bytes outside the frame a backup reads)."""
        listed: list[tuple[bytes, int]] = []
        distinct: list[tuple[bytes, int, int]] = []
        seen: set[bytes] = set()
        lead = min(self.lookback, offset) if self.planned_before(offset) else 0
        before = self.pread(offset - lead, lead) if lead else b""
        if len(before) != lead:
            raise InputError(f"source ended at offset {offset - lead + len(before)}")
        if lead:
            with self._count:
                self.lookback_read += lead
        view = memoryview(data)
        zeros = self._zero(len(data))[0]  # a piece is all zero when it prefixes this (memcmp)
        cuts = frame_cuts(self._chunker(), view, before)
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            piece = view[start:end]
            if zeros.startswith(piece):
                listed.append((ZERO_ID, end - start))
                continue
            piece_id = self.hasher.chunk_id(piece)
            listed.append((piece_id, end - start))
            if piece_id in seen:
                continue
            seen.add(piece_id)
            distinct.append((piece_id, start, end))
        return listed, distinct

    def _store(
        self, view: memoryview, distinct: list[tuple[bytes, int, int]]
    ) -> list[Piece | Unit]:
        """The new pieces of a frame encoded: in a version-4 repository those this frame claims
        (:meth:`_claim`: not stored, not claimed by another frame) as one compression unit, else
        each piece not stored yet on its own."""
        if not self.units:
            out: list[Piece | Unit] = []
            for piece_id, start, end in distinct:
                if self.known(piece_id):
                    continue
                codec, payload, level = self._encode(view[start:end])
                out.append((piece_id, codec, payload, end - start, level))
            return out
        claimed = [(pid, start, end) for pid, start, end in distinct if self._claim(pid)]
        if not claimed:
            return []
        adjacent = all(a[2] == b[1] for a, b in pairwise(claimed))
        whole = view[claimed[0][1] : claimed[-1][2]] if adjacent else None
        return self._unit([(pid, view[start:end]) for pid, start, end in claimed], whole)

    def _unit(
        self, fresh: list[tuple[bytes, memoryview]], whole: memoryview | None = None
    ) -> list[Piece | Unit]:
        """The new pieces of a frame as one compression unit; a single piece, or the pieces of
        a unit that does not save 3 %, as plain blobs, each encoded on its own (codec 1 / 0).
        ``whole``: the pieces' bytes when they are adjacent in the frame (compressed as they
        are, not joined into a copy).  When zstd saved nothing at all on the unit, the pieces
        are stored raw without compressing each again (see ``BlobCodec.encode_unit``)."""
        if len(fresh) == 1:
            piece_id, piece = fresh[0]
            codec, payload, level = self._encode(piece)
            return [(piece_id, codec, payload, piece.nbytes, level)]
        level = self.policy.level
        unit, incompressible = self.codec.encode_unit(
            [whole] if whole is not None else [p for _, p in fresh], level
        )
        self.policy.compressed(level)
        if unit is None:  # mostly incompressible: the compressible pieces still shrink alone
            out: list[Piece | Unit] = []
            for pid, piece in fresh:
                if incompressible:  # stored as views of the frame read (immutable): no copy
                    out.append((pid, CODEC_RAW, piece, piece.nbytes, 0))
                    continue
                codec, payload, piece_level = self._encode(piece)
                out.append((pid, codec, payload, piece.nbytes, piece_level))
            return out
        members, pos = [], 0
        for piece_id, piece in fresh:
            members.append((piece_id, pos, piece.nbytes))
            pos += piece.nbytes
        return [Unit(members, unit, pos, level)]

    def __call__(
        self, i: int, offset: int, length: int
    ) -> tuple[bytes, bytes, int, bytes | None, list[Piece | Unit], int]:
        """``(chunk id, xxh3, codec (-1: reused from the parent), payload or None, new pieces,
        zstd level of a codec-1 payload)``."""
        started = time.perf_counter()
        data = self.pread(offset, length)
        read = time.perf_counter()
        try:
            return self._process(i, offset, length, data)
        finally:
            self.policy.observe(read - started, time.perf_counter() - read)

    def _process(
        self, i: int, offset: int, length: int, data: bytes
    ) -> tuple[bytes, bytes, int, bytes | None, list[Piece | Unit], int]:
        if len(data) != length:
            raise InputError(f"source ended at offset {offset + len(data)}, expected more data")
        zeros, zero_fp = self._zero(length)
        is_zero = data == zeros
        fp = zero_fp if is_zero else self.hasher.fingerprint(data)
        parent = self.parent
        if (
            parent is not None
            and i < len(parent)
            and parent.offsets[i] == offset
            and parent.lengths[i] == length
            and parent.fp(i) == fp
        ):
            blob_id = parent.blob_id(i)
            if blob_id == ZERO_ID or blob_id in self.index:
                return blob_id, fp, -1, None, [], 0
        if is_zero:
            return ZERO_ID, fp, 0, None, [], 0
        if self.recipe_ids:
            return self._by_recipe(data, offset, fp)
        blob_id = self.hasher.chunk_id(data)
        if self.known(blob_id):
            return blob_id, fp, 0, None, [], 0
        if self.image_cdc is not None:
            cut = self._recipe(data, offset)
            if cut is not None:
                return blob_id, fp, CODEC_RECIPE, cut[0], cut[1], 0
        codec, payload, level = self._encode(data)
        return blob_id, fp, codec, payload, [], level

    def _by_recipe(
        self, data: bytes, offset: int, fp: bytes
    ) -> tuple[bytes, bytes, int, bytes | None, list[Piece | Unit], int]:
        """Version 5: the frame is cut and its pieces hashed first; its id is the keyed hash of
        the recipe (:meth:`ChunkHasher.recipe_id`), so the frame's bytes are hashed once, as
        pieces.  A known frame stores nothing; a frame of one piece is stored whole under that
        piece's id (the keyed BLAKE3 of the frame, as in every version)."""
        listed, distinct = self._cut(data, offset)
        if len(listed) < 2:
            blob_id = listed[0][0]
            if self.known(blob_id):
                return blob_id, fp, 0, None, [], 0
            if self.units:
                self._claim(blob_id)
            codec, payload, level = self._encode(data)
            return blob_id, fp, codec, payload, [], level
        recipe = encode_recipe(listed)
        blob_id = self.hasher.recipe_id(recipe)
        if self.known(blob_id):
            return blob_id, fp, 0, None, [], 0
        return blob_id, fp, CODEC_RECIPE, recipe, self._store(memoryview(data), distinct), 0

    def _encode(self, data: bytes | memoryview) -> tuple[int, bytes, int]:
        """``(codec, payload, level)``: the level this blob was tried at (recorded in its pack
        entry when zstd was kept)."""
        level = self.policy.level
        codec, payload = self.codec.encode(data, level)
        self.policy.compressed(level)
        return codec, payload, level


def backup_disk(
    repo: Repository,
    source: Readable | BinaryIO,
    size: int,
    *,
    index: int = 0,
    name: str = "disk0",
    parent: ChunkTable | None = None,
    changed: Sequence[Extent] | None = None,
    allocated: Sequence[Extent] | None = None,
    reason: str = "",
    workers: int | None = None,
    progress: Progress | None = None,
    extra: dict[str, Any] | None = None,
    plan: ReadPlan | None = None,
    read_limit: Pacer | None = None,
) -> DiskResult:
    """Back up ``size`` bytes of ``source`` as ``plan`` says (see the module docstring for
    modes); the recorded mode and reason are the plan's, never changed here.

    ``plan``: decided by the caller's planner (VM disks: ``vmkeep.vsphere.cbt.plan_disk``);
    ``parent`` must then be the chunk table of ``plan.base`` (and is ignored for a ``full``
    plan).  Without a plan, :func:`~vmkeep.storage.read_plan.image_plan` plans from ``parent``,
    ``changed``, ``allocated`` and ``reason`` (disk images).  ``read_limit``: every read of
    ``source`` is booked with it before it is issued (the source's bandwidth limit,
    :func:`vmkeep.storage.rate_limit.source_reads`).

    Atomicity: the disk's packs and its index are durable when this returns; nothing is visible
    as a restore point until :func:`commit_point`.  Not retried here (callers re-run the disk:
    chunks already stored by the failed attempt are deduplicated only once their index exists).
    """
    started = time.monotonic()
    chunk_size = repo.config.image_chunk_size
    nchunks = (size + chunk_size - 1) // chunk_size
    if plan is None:  # a disk image: no CBT knowledge, the image planner decides
        plan = image_plan(size, parent, changed=changed, allocated=allocated, reason=reason,
                          disk_key=index)
    _check_plan(plan, parent, size)
    if plan.base is None:
        parent = None  # a full read: nothing comes from a previous point
    planned = chunk_reads(plan, size, chunk_size)
    to_read, excluded = planned.reads, planned.excluded
    is_excluded = _contains(excluded)

    keep_freed_buffers()
    workers = workers or (os.cpu_count() or 2) + 1
    session = repo.write_session()
    stats = DiskStats(chunks=nchunks)
    table = ChunkTable()
    work = _ChunkWork(repo, paced(make_pread(source), read_limit), session.known, parent)
    if plan.extents is not None or excluded:
        work.planned_before = _in_ranges(to_read, chunk_size)
    inflight: deque[tuple[int, int, int, Future[Any]]] = deque()
    # deep enough that a slow frame at the head (consumed in order) does not idle the workers:
    # 2 x workers left them waiting for work 18 % of the time (docs/performance.md)
    max_inflight = INFLIGHT_PER_WORKER * workers

    def consume() -> None:
        i, offset, length, future = inflight.popleft()
        blob_id, fp, codec, payload, pieces, level = future.result()
        stats.bytes_read += length
        if codec == -1:
            stats.chunks_reused += 1
        elif blob_id == ZERO_ID:
            stats.chunks_zero += 1
        elif payload is not None:
            new_frame = not session.known(blob_id)
            for piece in pieces:
                if isinstance(piece, Unit):  # claimed pieces: stored with this frame's unit
                    listed = session.add_unit(
                        piece.members, piece.payload, piece.length, piece.level
                    )
                    stats.units_new += bool(listed)
                    stats.pieces_new += len(listed)
                    stats.bytes_pieces_new += sum(n for _id, _at, n in listed)
                    continue
                piece_id, piece_codec, piece_payload, piece_length, piece_level = piece
                if (new_frame or work.units) and session.add(
                    piece_id, piece_codec, piece_payload, piece_length, piece_level
                ):
                    stats.pieces_new += 1
                    stats.bytes_pieces_new += piece_length
            if new_frame and session.add(blob_id, codec, payload, length, level):
                stats.chunks_new += 1
                stats.bytes_new += length
        _fill_until(i)
        table.append(offset, length, blob_id, fp)
        if progress:
            progress(length)

    def _fill_until(stop: int) -> None:
        # chunks not read: copied from the parent (cbt) or zero (unallocated on a full read)
        while len(table) < stop:
            j = len(table)
            off = j * chunk_size
            length = min(chunk_size, size - off)
            if excluded and is_excluded(j):
                table.append(off, length, ZERO_ID, ZERO_FP)
                stats.chunks_zero += 1
                stats.bytes_excluded += length
            elif parent is not None:
                table.append(off, length, parent.blob_id(j), parent.fp(j))
                stats.chunks_reused += 1
            else:
                table.append(off, length, ZERO_ID, ZERO_FP)
                stats.chunks_zero += 1
            if progress:
                progress(length)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="vmkeep-chunk")
    try:
        for span in to_read:
            for i in span:
                offset = i * chunk_size
                length = min(chunk_size, size - offset)
                inflight.append((i, offset, length, pool.submit(work, i, offset, length)))
                if len(inflight) >= max_inflight:
                    consume()
        while inflight:
            consume()
        _fill_until(nchunks)
        stats.bytes_stored = session.bytes_stored
        index_key = session.commit()
    except BaseException:
        for *_, future in inflight:
            future.cancel()
        session.abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    stats.duration_s = time.monotonic() - started
    stats.bytes_lookback = work.lookback_read
    info = DiskInfo(index, name, size, chunk_size, plan.mode, plan.reason, dict(extra or {}))
    info.extra.update(
        bytes_read=stats.bytes_read, bytes_new=stats.bytes_new, bytes_stored=stats.bytes_stored
    )
    if work.policy.blobs:  # blobs compressed per zstd level (see LevelPolicy)
        info.extra["zstd_levels"] = {str(k): v for k, v in sorted(work.policy.blobs.items())}
    return DiskResult(info, table, stats, index_key)


ZERO_FP = bytes(16)


def _check_plan(plan: ReadPlan, parent: ChunkTable | None, size: int) -> None:
    """Refuse to execute a plan the base does not fit (a caller's bug, never user input)."""
    if plan.base is not None and parent is None:
        raise ValueError(f"a {plan.mode} plan needs the base point's chunk table")
    if plan.mode == "cbt" and parent is not None and parent.size != size:
        raise ValueError(f"cbt plan over a base of {parent.size} bytes for a {size}-byte disk")


def commit_point(
    repo: Repository,
    name: str,
    results: Sequence[DiskResult],
    *,
    kind: str = "image",
    parent: str | None = None,
    meta: dict[str, Any] | None = None,
) -> RestorePoint:
    """Publish a restore point for disks whose sessions have committed (manifest written last)."""
    point = RestorePoint(
        name=name,
        kind=kind,
        time=clock.now(),
        disks=[r.info for r in results],
        chunks={r.info.index: r.chunks for r in results},
        parent=parent,
        meta=dict(meta or {}),
    )
    repo.save_point(point)
    return point
