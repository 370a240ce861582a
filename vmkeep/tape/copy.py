"""The tape copy job: restore points from a disk repository onto cartridges of a media pool.

Order of work (one drive, taken with the library's drive lock for the whole job):

1. plan: the objects each point needs (:class:`~vmkeep.tape.catalog.ObjectPlanner`); objects
   shared by several points of the job are written once;
2. pick a cartridge of the pool (:func:`choose_cartridge`: append to the pool's open cartridge
   when the pool allows appending, else an empty labelled one, else a scratch cartridge, else an
   expired one of the pool — which is relabelled, and its old catalog records removed from the
   repository), lock it, load it, label it if needed, and position after its last file;
3. write one tape file: a pax archive of ``config``/``config.sealed``/``keys/*`` (so each file is
   a repository fragment on its own), for each point its manifest (first, for streaming
   restores) then its packs and index files, and a trailer ``.vmkeep-tape/<tape>-<file>.json``
   (the catalog record), through the ring-buffered :class:`~vmkeep.tape.stream.BlockWriter`;
   objects are read (``O_DIRECT`` into a bounded buffer pool) and hashed ahead on a thread
   (:mod:`~vmkeep.tape.prefetch`);
4. at early warning the object in hand is finished, the file closed (trailer, end of archive,
   filemark) and the job continues on the next cartridge — objects are never split.  If the
   drive overflows instead (no early warning), the objects not acknowledged by the drive are
   written again on the next cartridge and the cut file's record lists only those that were;
5. on a cartridge of tape format 2 a closed data file is followed by its catalog file (the
   record alone: :mod:`~vmkeep.tape.catalog_file`, what ``tape scan`` reads instead of the
   data); the catalog record of each file is saved in the repository when the file is closed;
   the cartridge goes back to its slot at the end.

Nothing reports success that did not happen: a transport or medium error aborts the job with
that error (files already closed stay catalogued; the open one is not).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from vmkeep import clock
from vmkeep.scsi import smc
from vmkeep.scsi.errors import ScsiError, VolumeOverflow
from vmkeep.scsi.ssc import BlockSizeMismatch, EndOfData, FilemarkReached, TapeDrive
from vmkeep.storage.repository import Repository
from vmkeep.tape import catalog, catalog_file
from vmkeep.tape.catalog import FileRecord
from vmkeep.tape.errors import CartridgeInUse, NoCartridge, TapeJobError
from vmkeep.tape.label import Label, read_label, write_label
from vmkeep.tape.library import Library, Media, Pool, get_pool, load_pools
from vmkeep.tape.pax import META_DIR, PaxWriter, digest_fields
from vmkeep.tape.prefetch import Prefetch
from vmkeep.tape.stream import BlockWriter, Streaming

DEFAULT_BLOCK = 1 << 20


@dataclass
class CopyReport:
    job: str
    pool: str
    points: list[str]
    files: list[dict[str, Any]] = field(default_factory=list)
    cartridges: list[str] = field(default_factory=list)
    bytes: int = 0
    objects: int = 0
    seconds: float = 0.0
    drive_busy: float = 0.0
    #: time from each file's first block to its filemark, summed (the streaming phase)
    stream_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    drive: int | None = None

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job, "pool": self.pool, "points": self.points, "files": self.files,
            "cartridges": self.cartridges, "bytes": self.bytes, "objects": self.objects,
            "warnings": self.warnings, "drive": self.drive,
            "seconds": round(self.seconds, 3), "mb_per_s": round(self.mb_per_s, 1),
            "stream_mb_per_s": round(self.bytes / 1e6 / self.stream_seconds, 1)
            if self.stream_seconds else 0.0,
        }


def choose_cartridge(lib: Library, pool: Pool, repo_id: str, exclude: set[str]) -> tuple[str, str]:
    """(barcode, why) of the cartridge to write next; see the module docstring for the order."""
    media = lib.media()
    present = [e.barcode for es in lib.elements().values() for e in es
               if e.full and e.barcode and e.type in (smc.SLOT, smc.DRIVE)]
    usable = [b for b in present if b not in exclude and not lib.in_use(b)]

    def m(b: str) -> Media:
        return media.get(b, Media(b))

    if pool.append:
        open_ = [b for b in usable if m(b).pool == pool.name and not m(b).full and m(b).files > 0
                 and m(b).repository_id == repo_id]
        if open_:
            return max(open_, key=lambda b: m(b).sequence), "append"
    empty = [b for b in usable if m(b).pool == pool.name and m(b).files == 0]
    if empty:
        return min(empty), "empty"
    scratch = [b for b in usable if m(b).pool in (None, "scratch")]
    if scratch:
        return min(scratch), "scratch"
    expired = [b for b in usable if m(b).pool == pool.name and m(b).expired()]
    if expired:
        return min(expired, key=lambda b: m(b).last_written or ""), "expired"
    raise NoCartridge(
        pool.name, f"{len(present)} cartridge(s) present, none free, empty or expired"
    )


class _Mount:
    """A cartridge loaded in the job's drive, positioned for appending."""

    def __init__(self, lib: Library, drive_index: int, drive: TapeDrive, barcode: str) -> None:
        self.lib, self.di, self.drive, self.barcode = lib, drive_index, drive, barcode
        self.label: Label | None = None
        self.next_file = 1


def _mount(
    lib: Library, di: int, drive: TapeDrive, barcode: str, why: str, pool: Pool, repo_id: str,
    block_size: int,
) -> _Mount:
    lib.load(barcode, di)
    drive.wait_ready()
    drive.set_variable_blocks()
    block_size = _block_size(drive, block_size)  # after loading: some drives need a medium
    mnt = _Mount(lib, di, drive, barcode)
    media = lib.media().get(barcode, Media(barcode))
    now = clock.now().isoformat()
    if why == "append":
        label = read_label(drive)
        if label.tape_id != barcode or label.repository_id != repo_id:
            raise TapeJobError(f"cartridge {barcode}: label says {label.tape_id}, "
                               f"repository {label.repository_id}; catalog disagrees")
        _check_end(drive, label, media)
        mnt.label, mnt.next_file = label, media.files + 1
        return mnt
    seq = media.sequence if why == "empty" and media.sequence else lib.next_sequence(pool.name)
    label = Label(barcode, pool.name, now, block_size, repo_id, seq)
    write_label(drive, label)
    lib.update_media(barcode, pool=pool.name, sequence=seq, files=0, full=False,
                     repository_id=repo_id, labelled_at=now, expires=None)
    mnt.label = label
    return mnt


class _NotAppendable(TapeJobError):
    """Tape: cartridge {} has data after its last catalogued file ({}); not appended to"""


def _check_end(drive: TapeDrive, label: Label, media: Media) -> None:
    """Position after the last catalogued file and make sure nothing follows it (a job that
    died mid-file leaves data no catalog knows; appending after it would merge the two)."""
    if media.files:
        drive.space_filemarks(media.files)
    try:
        drive.read_block(label.block_size)
    except EndOfData:
        return
    except (FilemarkReached, BlockSizeMismatch):
        pass
    raise _NotAppendable(media.barcode, media.files)


def _block_size(drive: TapeDrive, preferred: int) -> int:
    return drive.read_block_limits().choose(preferred)


def copy_points(
    repo: Repository,
    lib: Library,
    point_ids: Sequence[str],
    pool_name: str,
    *,
    drive_index: int | None = None,
    block_size: int = DEFAULT_BLOCK,
    streaming: Streaming | None = None,
    progress: Callable[[int], None] | None = None,
    incremental: bool = True,
) -> CopyReport:
    """Copy ``point_ids`` (full ids) to tape; returns the report.  See the module docstring.

    ``incremental``: objects already on a live cartridge of the pool are referenced, not
    written again (those cartridges' expiry moves with the new points).  ``streaming``: the
    ring's blocks and the WRITEs queued at the drive (:class:`~vmkeep.tape.stream.Streaming`;
    default :meth:`~vmkeep.tape.stream.Streaming.configured`)."""
    streaming = streaming or Streaming.configured()
    pool = get_pool(pool_name)
    job = uuid.uuid4().hex[:16]
    repo_id = repo.config.id
    plan = catalog.plan(repo, point_ids)
    live = {b for b, m in lib.media().items() if m.pool == pool.name and not m.expired()}
    elsewhere = catalog.on_tape(catalog.records(repo), pool.name, live) if incremental else {}
    refs = {p: {k: list(elsewhere[k]) for k in plan[p] if k in elsewhere} for p in point_ids}
    order: list[str] = []
    seen: set[str] = set(elsewhere)
    for p in point_ids:
        for key in [plan[p][-1], *plan[p][:-1]]:  # the manifest first: see docs/format.md
            if key not in seen:
                seen.add(key)
                order.append(key)
    base = catalog.base_objects(repo)
    report = CopyReport(job, pool.name, list(point_ids))
    if pool.name not in load_pools():
        report.warnings.append(
            f"pool {pool.name} is not defined (vmkeep tape pool add {pool.name} "
            f"--retention-days N): its cartridges get the default retention of "
            f"{pool.retention_days} days and are appended to")
    t0 = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(repo.lock("shared"))  # prune must not delete packs being copied
        di = stack.enter_context(lib.drive_lock(drive_index))
        report.drive = di
        drive = lib.open_drive(di)
        stack.callback(drive.close)
        used: set[str] = set()
        pending = list(order)
        # reading starts now, while the cartridge is loaded and labelled
        objs = [Prefetch(repo.raw_backend, pending)]
        stack.callback(lambda: objs[0].close())
        while pending:
            if objs[0].next_key != pending[0]:  # objects read but not on tape (overflow)
                objs[0].close()
                objs[0] = Prefetch(repo.raw_backend, pending)
            barcode, why = choose_cartridge(lib, pool, repo_id, used)
            used.add(barcode)
            with ExitStack() as held:
                try:
                    held.enter_context(lib.cartridge_lock(barcode))
                except CartridgeInUse:
                    continue  # another job took it between choosing and locking
                try:
                    mnt = _mount(lib, di, drive, barcode, why, pool, repo_id, block_size)
                    if why != "append":  # (re)labelled: what was on it is gone
                        catalog.forget_tape(repo, barcode)
                except _NotAppendable as exc:
                    report.warnings.append(exc.get_message())
                    lib.update_media(barcode, full=True)
                    _return_cartridge(lib, di)
                    continue
                try:
                    pending, full = _write_file(repo, mnt, pool, job, base, pending, objs[0],
                                                plan, streaming, report, progress, refs)
                except BaseException:
                    with contextlib.suppress(ScsiError):  # the first error is the one to tell
                        _return_cartridge(lib, di)
                    raise
                _return_cartridge(lib, di)
            if barcode not in report.cartridges:
                report.cartridges.append(barcode)
            if full:
                lib.update_media(barcode, full=True)
    if report.files:
        expires = (clock.now() + timedelta(days=pool.retention_days)).isoformat()
        media = lib.media()
        for tape in {str(loc[0]) for r in refs.values() for loc in r.values()}:
            lib.update_media(tape, expires=max(expires, media[tape].expires or ""))
    report.seconds = time.perf_counter() - t0
    return report


def _return_cartridge(lib: Library, di: int) -> None:
    lib.unload(di)


def _write_file(
    repo: Repository, mnt: _Mount, pool: Pool, job: str, base: list[str], pending: list[str],
    objs: Prefetch, plan: dict[str, list[str]], streaming: Streaming, report: CopyReport,
    progress: Callable[[int], None] | None, refs: dict[str, dict[str, list[Any]]],
) -> tuple[list[str], bool]:
    """Write one tape file: ``base`` then ``pending``, whose objects ``objs`` yields in order
    (the items not consumed stay in it for the next file); returns (objects still to write,
    cartridge full)."""
    assert mnt.label is not None
    now = clock.now()
    fileno = mnt.next_file
    rec = FileRecord(mnt.barcode, pool.name, fileno, job, repo.config.id, now.isoformat(),
                     mnt.label.block_size)
    position = mnt.drive.read_position()
    rec.start_block = position[1] if position else None
    bw = BlockWriter(mnt.drive, mnt.label.block_size, streaming.depth, streaming.outstanding)
    pax = PaxWriter(bw, now.timestamp())
    b3_only = not mnt.label.has_xxh3  # an older cartridge appended to keeps its format
    ends: list[tuple[str, int, int, str]] = []  # key, end offset, size, digest
    full = False
    done = 0
    try:
        for key in base:  # config, keys: small
            small = repo.raw_backend.get(key)
            b3 = pax.add(key, small)
            ends.append((key, pax.offset, len(small), b3))
        for key, data, digest, release in objs:
            b3 = pax.add(key, data, digest, b3_only=b3_only)
            if release is not None:
                bw.fence(release)  # the buffer is reused once the drive has its blocks
            ends.append((key, pax.offset, len(data), b3))
            done += 1
            if progress:
                progress(len(data))
            if bw.early_warning:
                full = True
                break
        rest = pending[done:]
        _finish(rec, ends, plan, refs)
        pax.add(f"{META_DIR}/{mnt.barcode}-{fileno:05d}.json",
                _trailer(rec))
        pax.close()
        bw.close()
        full = full or bw.early_warning
    except VolumeOverflow:
        bw.abort()
        full = True
        on_tape = [e for e in ends if e[1] <= bw.confirmed]
        written = {e[0] for e in on_tape}
        rest = [k for k in pending if k not in written]
        rec.complete = False
        _finish(rec, on_tape, plan, refs)
        if mnt.next_file == 1 and not [k for k in written if k not in base]:
            catalog.save(repo, rec)
            raise TapeJobError(f"{pending[0]} does not fit on an empty cartridge of pool "
                               f"{pool.name}") from None
    except BaseException:
        bw.abort()
        raise
    rec.bytes = bw.confirmed
    report.drive_busy += bw.drive_busy
    if bw.started is not None:
        report.stream_seconds += (bw.finished or time.perf_counter()) - bw.started
    last = fileno
    if rec.complete and mnt.label.has_catalog_files:
        try:
            full = catalog_file.write(mnt.drive, mnt.label.block_size, rec, now.timestamp()) or full
            last = fileno + 1
        except VolumeOverflow:  # the data file is whole; scan will read it instead
            report.warnings.append(f"{mnt.barcode}: no room for the catalog file of file "
                                   f"{fileno}")
            full, last = True, fileno + 1
    catalog.save(repo, rec)
    expires = (now + timedelta(days=pool.retention_days)).isoformat()
    media = mnt.lib.media().get(mnt.barcode, Media(mnt.barcode))
    mnt.lib.update_media(mnt.barcode, files=last, last_written=now.isoformat(),
                         expires=max(expires, media.expires or ""))
    report.files.append({"tape": mnt.barcode, "file": fileno, "bytes": rec.bytes,
                         "objects": len(rec.objects), "complete": rec.complete})
    report.bytes += rec.bytes
    report.objects += len([k for k in rec.objects if k not in base])
    return rest, full


def _finish(
    rec: FileRecord, ends: list[tuple[str, int, int, str]], plan: dict[str, list[str]],
    refs: dict[str, dict[str, list[Any]]],
) -> None:
    rec.objects = {k: {"size": size, **digest_fields(d)} for k, _end, size, d in ends}
    for point, keys in plan.items():
        here = [k for k in keys if k in rec.objects]
        if here:
            rec.points[point] = here
        if refs.get(point) and keys[-1] in rec.objects:  # the manifest's file names the rest
            rec.refs[point] = refs[point]


def _trailer(rec: FileRecord) -> bytes:
    import json

    return json.dumps(rec.to_json(), sort_keys=True).encode()
