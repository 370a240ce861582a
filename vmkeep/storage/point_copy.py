"""Copying restore points from one repository into another (off-site copies, the 3-2-1 rule).

A copy is *logical*: the destination stores each point in its own format, under its own keys,
password, chunk size and compression, through the same data paths as a backup — so a copy
restores, checks, forgets and prunes in the destination exactly like a point backed up there,
and the two repositories share nothing (a damaged or compromised source key cannot reach the
copy).  What this module decides:

* **which source points are already in the destination** (:func:`copies_of`): every copy
  carries the record ``meta["copy"]`` (:class:`CopyRecord`, version 1) naming the source
  repository's id and the source point; nothing else identifies a copy.
* **how an image or VM point is read** (:func:`plan_image_copy`): the base of a copy is the
  destination's newest copy of the same name and kind older than the point.  When the source
  point that copy was made from still exists, only the chunks that differ between the two
  source points are read (a ``cbt`` plan whose change list is the manifests' difference: no
  guessing, the chunk ids say it); when it was forgotten since, every chunk is read and compared
  (``scan``); without a base, the non-zero chunks are read (``full``).  A disk whose size
  changed is scanned.
* **what the copy records**: the point's name, kind, time, hostname, parent (the destination's
  copy of the source parent, when there is one) and metadata (VM configuration, consistency,
  CBT change ids — a copied VM point is a valid CBT base for a backup made straight into the
  destination later, because it holds the same bytes) are the source's; the disks' chunk-range
  records are converted when the two repositories' image chunk sizes differ.

Atomicity: as for a backup — packs and the index are durable before the manifest, written last;
an interrupted copy leaves no point in the destination (its packs are unreferenced until prune).
Nothing here is retried; nothing here deletes anything.  File points are copied by the layer
above (their source adapter lives in :mod:`vmkeep.guestfiles.point_source`); this module gives
them :class:`CopyRecord` and :func:`copy_meta`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple, cast

from vmkeep import clock
from vmkeep.storage.codec import ID_SIZE, ZERO_ID
from vmkeep.storage.disk_backup import DiskResult, Readable, backup_disk
from vmkeep.storage.errors import StorageError
from vmkeep.storage.manifest import ChunkTable, DiskInfo, RestorePoint
from vmkeep.storage.read_plan import BaseRef, Extent, ReadPlan
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import PointSummary, Repository

#: The key of the copy record in a copied point's ``meta``.
COPY_KEY = "copy"
COPY_RECORD_VERSION = 1
#: Source chunks fetched ahead of the data path's reads: none, because the data path's workers
#: already read frames in parallel and a prefetch racing them fetched and decoded chunks twice
#: (8 ahead: 5.2 CPU-s for a 1 GiB full copy instead of 3.1; docs/performance.md, "Off-site
#: copies").
READAHEAD = 0


class CopySourceDamaged(StorageError):
    """Restore point {} was not copied: {} (nothing committed; run `vmkeep check` on the source)

    The source could not deliver the point whole (a missing or corrupt chunk or manifest, a file
    that does not read): the copy job goes on with the other points and then fails."""

    exit_code = 13  # as DataCorrupt / BlobMissing: the source's data is damaged


@dataclass(frozen=True)
class CopyRecord:
    """``meta["copy"]`` of a copied point (format version 1, docs/format.md "Copies")."""

    from_repo: str  # the source repository's id (config ``id``)
    from_location: str  # where it was (no credentials), for people
    point: str  # the source point's id
    copied: str  # when the copy was committed, ISO-8601 UTC

    def to_json(self) -> dict[str, Any]:
        return {"version": COPY_RECORD_VERSION, "from_repo": self.from_repo,
                "from_location": self.from_location, "point": self.point, "copied": self.copied}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> CopyRecord | None:
        """The record of a point's ``meta``; None when absent, of another version or malformed
        (a point that is not a copy, for every purpose)."""
        rec = meta.get(COPY_KEY)
        if not isinstance(rec, Mapping) or rec.get("version") != COPY_RECORD_VERSION:
            return None
        fields = [rec.get(k) for k in ("from_repo", "from_location", "point", "copied")]
        if not all(isinstance(v, str) for v in fields):
            return None
        return cls(*cast(list[str], fields))


def copy_meta(source: Repository, point_id: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The copy's ``meta``: the source point's, with this copy's :class:`CopyRecord`
    (replacing the record of an earlier hop when the source point is itself a copy)."""
    record = CopyRecord(source.config.id, source.backend.location, point_id,
                        clock.now().isoformat())
    return {**meta, COPY_KEY: record.to_json()}


def copies_of(dest: Repository, source_id: str,
              summaries: Iterable[PointSummary] | None = None) -> dict[str, PointSummary]:
    """The destination's copies of points of the repository whose id is ``source_id``:
    ``{source point id: the copy's summary}`` (the newest copy when there are several)."""
    found: dict[str, PointSummary] = {}
    for summary in sorted(summaries if summaries is not None else dest.list_points(),
                          key=lambda s: (s.time, s.id)):
        record = CopyRecord.from_meta(summary.meta)
        if record is not None and record.from_repo == source_id:
            found[record.point] = summary
    return found


@dataclass(frozen=True)
class CopyBase:
    """What an image copy builds on: ``dest_point``, the destination's copy of
    ``source_point`` (None when that source point is gone: the copy then scans)."""

    dest_point: RestorePoint
    source_point: RestorePoint | None


def differing_extents(new: ChunkTable, old: ChunkTable) -> list[Extent] | None:
    """Byte ranges where ``new`` and ``old`` (tables of one repository) hold different chunks,
    adjacent ones joined; None when the two are not laid out alike (sizes or chunk
    boundaries differ), so they cannot be compared chunk by chunk."""
    if new.size != old.size or new.offsets != old.offsets or new.lengths != old.lengths:
        return None
    a, b = new.ids, old.ids
    return _extents(new, (i for i in range(len(new))
                          if a[i * ID_SIZE : (i + 1) * ID_SIZE]
                          != b[i * ID_SIZE : (i + 1) * ID_SIZE]))


def data_extents(table: ChunkTable) -> list[Extent]:
    """Byte ranges of a table's non-zero chunks, adjacent ones joined."""
    ids = table.ids
    return _extents(table, (i for i in range(len(table))
                            if ids[i * ID_SIZE : (i + 1) * ID_SIZE] != ZERO_ID))


def _extents(table: ChunkTable, chunks: Iterable[int]) -> list[Extent]:
    """Byte ranges of ``chunks`` (ascending numbers) of ``table``, adjacent ones joined."""
    out: list[Extent] = []
    for i in chunks:
        offset, length = table.offsets[i], table.lengths[i]
        if out and out[-1][0] + out[-1][1] == offset:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((offset, length))
    return out


def plan_image_copy(point: RestorePoint, disk: DiskInfo, base: CopyBase | None) -> ReadPlan:
    """How disk ``disk`` of source ``point`` is read (see the module docstring)."""
    table = point.chunks[disk.index]
    dest_table = base.dest_point.chunks.get(disk.index) if base is not None else None
    if base is None or dest_table is None:
        return ReadPlan(disk.index, "full", "copy: no earlier copy of this disk",
                        tuple(data_extents(table)))
    ref = BaseRef(base.dest_point.id, disk.index)
    if dest_table.size != disk.size:
        return ReadPlan(disk.index, "scan", "copy: disk size changed since the earlier copy",
                        base=ref)
    old = base.source_point.chunks.get(disk.index) if base.source_point is not None else None
    changed = differing_extents(table, old) if old is not None else None
    if changed is None:
        why = ("the earlier copy's source point is gone" if base.source_point is None
               else "the chunk layouts differ")
        return ReadPlan(disk.index, "scan", f"copy: {why}: every chunk compared", base=ref)
    return ReadPlan(disk.index, "cbt",
                    f"copy: chunks changed since {base.source_point.short_id}"  # type: ignore[union-attr]
                    " in the source", tuple(changed), ref)


def _rescaled(extra: dict[str, Any], old: int, new: int) -> dict[str, Any]:
    """A disk's records with chunk-unit ranges (``cbt.changed_ranges``, ``cbt.zeroed_ranges``)
    converted from ``old``-byte to ``new``-byte chunks, each range widened to whole chunks."""
    cbt = extra.get("cbt")
    if old == new or not isinstance(cbt, Mapping):
        return extra
    out = dict(cbt)
    for key in ("changed_ranges", "zeroed_ranges"):
        ranges = cbt.get(key)
        if isinstance(ranges, list):
            out[key] = [[r[0] * old // new, -(-r[1] * old // new)] for r in ranges
                        if isinstance(r, list) and len(r) == 2
                        and all(isinstance(v, int) for v in r)]
    return {**extra, "cbt": out}


@dataclass
class ImageCopy:
    """One copied image or VM point: the destination point and what each disk cost."""

    point: RestorePoint
    disks: list[dict[str, Any]]
    bytes_read: int
    bytes_new: int
    bytes_stored: int
    duration_s: float


def copy_image_point(
    source: Repository,
    dest: Repository,
    point: RestorePoint,
    base: CopyBase | None,
    *,
    parent: str | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> ImageCopy:
    """Copy image/VM ``point`` of ``source`` into ``dest`` and commit it there (manifest last);
    ``parent``: the destination id recorded as its parent.  The caller holds shared locks on
    both repositories.  A chunk the source cannot deliver raises :class:`CopySourceDamaged`
    before anything is committed."""
    started = time.monotonic()
    results: list[DiskResult] = []
    report: list[dict[str, Any]] = []
    for disk in point.disks:
        plan = plan_image_copy(point, disk, base)
        base_table = (base.dest_point.chunks.get(disk.index)
                      if base is not None and plan.base is not None else None)
        reader = _SourceReads(PointReader(source, point, disk.index, readahead=READAHEAD),
                              point.short_id)
        try:
            result = backup_disk(dest, cast(Readable, reader), disk.size, index=disk.index,
                                 name=disk.name, parent=base_table, plan=plan,
                                 progress=progress, workers=workers)
        finally:
            reader.close()
        extra = _rescaled(dict(disk.extra), disk.chunk_size, result.info.chunk_size)
        result.info = replace(disk, chunk_size=result.info.chunk_size, extra=extra)
        results.append(result)
        report.append({"disk": disk.index, "mode": plan.mode, "reason": plan.reason,
                       "bytes_read": result.stats.bytes_read,
                       "bytes_new": result.stats.bytes_new,
                       "bytes_stored": result.stats.bytes_stored})
    copied = RestorePoint(
        name=point.name, kind=point.kind, time=point.time,
        disks=[r.info for r in results], chunks={r.info.index: r.chunks for r in results},
        parent=parent, hostname=point.hostname, meta=copy_meta(source, point.id, point.meta),
    )
    dest.save_point(copied)
    return ImageCopy(
        copied, report,
        bytes_read=sum(r.stats.bytes_read for r in results),
        bytes_new=sum(r.stats.bytes_new for r in results),
        bytes_stored=sum(r.stats.bytes_stored for r in results),
        duration_s=round(time.monotonic() - started, 3),
    )


class _SourceReads:
    """The source disk's ``pread`` for the data path, a damaged source (a missing or corrupt
    chunk) turned into :class:`CopySourceDamaged` so that it is never taken for a problem of
    the destination; transient errors (an unreachable source) pass unchanged."""

    def __init__(self, reader: PointReader, point: str) -> None:
        self.reader, self.point = reader, point

    def pread(self, offset: int, length: int) -> bytes:
        try:
            return self.reader.pread(offset, length)
        except StorageError as exc:
            if exc.is_transient:
                raise
            raise CopySourceDamaged(self.point, exc.get_message()) from exc

    def close(self) -> None:
        self.reader.close()


class EarlierCopy(NamedTuple):
    """The destination's copy ``dest_id`` of source point ``source_id``: what the next copy of
    the same name builds on."""

    dest_id: str
    source_id: str


def older_copy(copies: Mapping[str, PointSummary], name: str, kind: str, before: datetime
               ) -> EarlierCopy | None:
    """The newest copy of a point called ``name`` of ``kind`` taken before ``before`` — the
    base of the next copy of that name (``copies``: :func:`copies_of`)."""
    best: tuple[str, PointSummary] | None = None
    for source_id, summary in copies.items():
        if summary.name == name and summary.kind == kind and summary.time < before and (
                best is None or (summary.time, summary.id) > (best[1].time, best[1].id)):
            best = (source_id, summary)
    return EarlierCopy(best[1].id, best[0]) if best is not None else None
