"""Bringing restore points back from tape, and rebuilding the catalog from tapes (scan).

:func:`restore_point` reads the catalog records (from ``catalog_repo``, by default the target),
finds the tape files holding the point's objects, and for each cartridge: loads it, checks its
label (tape id, repository id), spaces to each file, streams the pax archive and puts the
wanted members into the target repository *as stored* (encrypted repositories stay
encrypted).  Every member is verified against its pax BLAKE3 record and the catalog's.  Write
order: key files, packs and index files as they come, manifests after all data, ``config``
last — so an interrupted restore never leaves a manifest without its data, nor a repository
``config`` before its keys.  A target that exists must have the tape's repository id.

:func:`scan` reads every vmkeep cartridge in the library (or the given barcodes) from the
start and rebuilds the catalog records: on a cartridge of tape format 2 from the catalog files
(:mod:`~vmkeep.tape.catalog_file`; the data files are spaced over with SPACE filemarks after
their first block), falling back to reading a data file in full when its catalog file is
missing or damaged; on a version-1 cartridge from the data files' trailers (or, for a file cut
by an overflow, from the members found).  It creates the target repository from the tape's
``config`` and keys when it does not exist, and saves the records there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vmkeep.scsi import smc
from vmkeep.scsi.errors import IllegalRequest, ScsiError
from vmkeep.scsi.ssc import BlockSizeMismatch, EndOfData, TapeDrive
from vmkeep.storage.backend import Backend, open_backend
from vmkeep.storage.config import CONFIG_KEY, RepoConfig
from vmkeep.storage.errors import ObjectNotFound
from vmkeep.tape import catalog, catalog_file
from vmkeep.tape.catalog import FileRecord
from vmkeep.tape.errors import (
    CartridgeRelabelled,
    HostileTape,
    NotOnTape,
    TapeJobError,
    WrongRepository,
)
from vmkeep.tape.label import Label, read_label
from vmkeep.tape.library import Library
from vmkeep.tape.pax import META_DIR, digest_fields, entry_digest, read_members
from vmkeep.tape.stream import BlockReader


@dataclass
class RestoreReport:
    point: str
    cartridges: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"point": self.point, "cartridges": self.cartridges, "files": self.files,
                "objects": self.objects, "bytes": self.bytes}


def _resolve(recs: list[FileRecord], ref: str) -> str:
    ids = {p for r in recs for p in r.points if p.startswith(ref)}
    if len(ids) != 1:
        raise NotOnTape(ref, "" if not ids else f" (ambiguous: {len(ids)} matches)")
    return ids.pop()


def _target_id(target: Backend) -> str | None:
    try:
        return RepoConfig.decode(target.get(CONFIG_KEY)).id
    except ObjectNotFound:
        return None


def files_for_point(
    records: list[FileRecord], point: str, with_base: bool = False
) -> tuple[dict[tuple[str, int], set[str]], list[FileRecord]]:
    """The tape files holding ``point``'s objects, with the keys wanted from each (its own
    files' keys and what their ``refs`` name elsewhere; ``with_base``: config and keys too),
    and those files' records."""
    by_file = {(r.tape_id, r.file): r for r in records}
    wanted: dict[tuple[str, int], set[str]] = {}
    for r in records:
        if point not in r.points:
            continue
        keys = set(r.points[point])
        if with_base:
            keys |= {k for k in r.objects if not k.startswith(("packs/", "index/", "manifests/"))}
        wanted.setdefault((r.tape_id, r.file), set()).update(keys)
        for key, (tape, fileno) in r.refs.get(point, {}).items():
            if (tape, fileno) not in by_file:
                raise NotOnTape(point[:12], f": {key} is on {tape} file {fileno}, not catalogued")
            wanted.setdefault((tape, fileno), set()).add(key)
    if not wanted:
        raise NotOnTape(point[:12], "")
    return wanted, [by_file[f] for f in sorted(wanted)]


def check_label(label: Label, tape: str, repo_id: str, records: Iterable[FileRecord]) -> None:
    """The cartridge in the drive is the one the catalog means: its label names ``tape`` and
    the repository ``repo_id`` (:class:`HostileTape` otherwise), and it was not relabelled after
    any of its ``records`` was written (:class:`CartridgeRelabelled`): a cartridge relabelled by
    ``tape label --force``, or reused by another repository's pool, no longer holds them."""
    if label.tape_id != tape or label.repository_id != repo_id:
        raise HostileTape(f"cartridge {tape} is labelled {label.tape_id} for "
                          f"repository {label.repository_id}")
    labelled = _instant(label.labelled_at)
    stale = sorted(r.file for r in records if r.tape_id == tape and labelled is not None
                   and (written := _instant(r.written_at)) is not None and written < labelled)
    if stale:
        raise CartridgeRelabelled(tape, label.labelled_at, ", ".join(map(str, stale)))


def _instant(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class _Sink:
    """Puts restored objects into the target in a safe order (see the module docstring)."""

    def __init__(self, target: Backend) -> None:
        self.target = target
        self.deferred: dict[str, bytes] = {}
        self.objects = 0
        self.bytes = 0
        self.written: list[str] = []  # keys put into the target, in order

    def have(self, key: str) -> bool:
        return key in self.deferred or self.target.exists(key)

    def put(self, key: str, data: bytes) -> None:
        if key.startswith("manifests/") or key in ("config", "config.sealed"):
            self.deferred[key] = data
            return
        self.target.put(key, data)
        self.written.append(key)
        self.objects += 1
        self.bytes += len(data)

    def undo(self) -> None:
        """Delete what this sink put into the target, ``config`` first (the folder stops being
        a repository before its keys go)."""
        for key in sorted(self.written, key=lambda k: k != CONFIG_KEY):
            self.target.delete(key)
        self.written.clear()

    def finish(self) -> None:
        order = sorted(self.deferred, key=lambda k: (k == "config", k == "config.sealed", k))
        order = [k for k in order if k != "config"] + (["config"] if "config" in order else [])
        for key in order:
            if key in ("config", "config.sealed") and self.target.exists(key):
                continue
            self.target.put(key, self.deferred[key])
            self.written.append(key)
            self.objects += 1
            self.bytes += len(self.deferred[key])


def mount(lib: Library, di: int, drive: TapeDrive, barcode: str) -> Label:
    lib.load(barcode, di)
    drive.wait_ready()
    drive.set_variable_blocks()
    try:
        return read_label(drive)
    except (EndOfData, BlockSizeMismatch):
        raise HostileTape(f"cartridge {barcode} has no vmkeep label") from None


def restore_point(
    lib: Library,
    target_url: str,
    ref: str,
    *,
    catalog_records: list[FileRecord],
    drive_index: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> RestoreReport:
    """Bring restore point ``ref`` (id or prefix) from tape into the repository at
    ``target_url`` (created as a copy of the tape's repository when it does not exist)."""
    point = _resolve(catalog_records, ref)
    repo_id = next(r for r in catalog_records if point in r.points).repository_id
    target = open_backend(target_url, storage_options)
    tid = _target_id(target)
    if tid is not None and tid != repo_id:
        raise WrongRepository(repo_id, tid)
    wanted, files = files_for_point(catalog_records, point, with_base=tid is None)
    expected = {k: d for r in files for k, v in r.objects.items()
                if (d := entry_digest(v)) is not None}
    starts = {(r.tape_id, r.file): r.start_block for r in files}
    report = RestoreReport(point)
    sink = _Sink(target)
    with ExitStack() as stack:
        di = stack.enter_context(lib.drive_lock(drive_index))
        drive = lib.open_drive(di)
        stack.callback(drive.close)
        for tape in sorted({t for t, _ in wanted}):
            with lib.cartridge_lock(tape):
                try:
                    label = mount(lib, di, drive, tape)
                    check_label(label, tape, repo_id, files)
                    for fileno in sorted(n for t, n in wanted if t == tape):
                        keys = {k for k in wanted[(tape, fileno)] if not sink.have(k)}
                        position(drive, fileno, starts.get((tape, fileno)))
                        n = read_file(drive, label, fileno, keys, expected, sink)
                        report.files.append({"tape": tape, "file": fileno, "objects": n})
                finally:
                    lib.unload(di)
            report.cartridges.append(tape)
    missing = {k for ks in wanted.values() for k in ks} - set(sink.deferred) - {
        k for k in expected if target.exists(k)}
    if missing:
        raise TapeJobError(f"{len(missing)} object(s) of {point[:12]} were not found on tape")
    sink.finish()
    if tid is None:
        _accept_subset(target)
    report.objects, report.bytes = sink.objects, sink.bytes
    return report


def _accept_subset(target: Backend) -> None:
    """A repository created from tape holds the points restored so far, deliberately: record
    that as this client's known state (rollback detection would otherwise flag the others)."""
    from vmkeep.storage.repository import Repository

    Repository.from_backend(target).accept_rollback()


def position(drive: TapeDrive, fileno: int, start_block: int | None) -> None:
    """LOCATE to the file's recorded block where the drive supports it, else rewind and
    space over ``fileno`` filemarks (tgt: READ POSITION is a stub, LOCATE unsupported)."""
    if start_block is not None:
        try:
            drive.locate(start_block)
            return
        except IllegalRequest:
            pass
    drive.goto_file(fileno)


def read_file(
    drive: TapeDrive, label: Label, fileno: int, keys: set[str], expected: dict[str, str],
    sink: _Sink,
) -> int:
    reader = BlockReader(drive, label.block_size)
    n = 0
    for name, data, b3 in read_members(reader, lambda k: k in keys):
        if expected.get(name, b3) != b3:
            raise HostileTape(f"{name} on {label.tape_id} file {fileno} differs from the catalog")
        sink.put(name, data)
        n += 1
    return n


def scan(
    lib: Library,
    target_url: str,
    *,
    barcodes: Iterable[str] | None = None,
    drive_index: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rebuild the catalog from tapes into the repository at ``target_url`` (see module doc)."""
    from vmkeep.storage.repository import Repository

    target = open_backend(target_url, storage_options)
    if barcodes is None:
        barcodes = sorted(e.barcode for es in lib.elements().values() for e in es
                          if e.full and e.barcode and e.type in (smc.SLOT, smc.DRIVE))
    records: list[FileRecord] = []
    skipped: list[str] = []
    stats = _ScanStats()
    sink = _Sink(target)
    repo_id = _target_id(target)
    with ExitStack() as stack:
        di = stack.enter_context(lib.drive_lock(drive_index))
        drive = lib.open_drive(di)
        stack.callback(drive.close)
        for tape in barcodes:
            with lib.cartridge_lock(tape):
                try:
                    try:
                        label = mount(lib, di, drive, tape)
                    except HostileTape:
                        skipped.append(tape)
                        continue
                    if repo_id is None:
                        repo_id = label.repository_id
                    if label.repository_id != repo_id:
                        skipped.append(tape)
                        continue
                    records += _scan_tape(drive, label, sink, stats)
                finally:
                    lib.unload(di)
    existed = _target_id(target) is not None
    if repo_id is not None and not existed:
        sink.finish()
        try:
            _accept_subset(target)  # opens it: an encrypted one needs the right password
        except BaseException:
            sink.undo()  # a repository that cannot be opened is not left behind
            raise
    created = repo_id is not None and _target_id(target) is not None
    repo = Repository.from_backend(target) if _target_id(target) else None
    if repo is None or not created:
        raise TapeJobError("no vmkeep tape file with a repository config was found")
    for rec in records:
        catalog.save(repo, rec)
    return {"files": len(records), "skipped": skipped,
            "points": sorted({p for r in records for p in r.points}), "repository_id": repo_id,
            "from_catalog_files": stats.fast, "read_in_full": stats.read,
            "bytes_read": stats.bytes_read, "warnings": stats.warnings}


_BASE = ("config", "config.sealed", "keys/")


@dataclass
class _ScanStats:
    #: data files catalogued from their catalog file (data spaced over)
    fast: int = 0
    #: data files read in full (version-1 tapes, missing or damaged catalog files)
    read: int = 0
    bytes_read: int = 0
    warnings: list[str] = field(default_factory=list)


def _scan_tape(drive: TapeDrive, label: Label, sink: _Sink, st: _ScanStats) -> list[FileRecord]:
    """The records of one cartridge positioned at file 1: through the catalog files (format 2),
    reading in full only the data files without a good one (and every file of a version-1
    tape)."""
    if not label.has_catalog_files:
        return _read_all_files(drive, label, sink, st)
    kinds = _walk(drive, label, sink, st)
    out: list[FileRecord] = []
    for n in sorted(kinds):
        kind = kinds[n]
        after = kinds.get(n + 1)
        if kind == "bad" and kinds.get(n - 1) == "data":
            continue  # the damaged catalog file of file n-1, read below in full
        if kind not in ("data", "bad"):
            continue
        if isinstance(after, FileRecord):
            out.append(after)
            st.fast += 1
            continue
        st.warnings.append(f"{label.tape_id} file {n}: no usable catalog file, read in full")
        drive.goto_file(n)
        rec, _eod = _read_file(drive, label, n, sink, st)
        if rec is not None:
            out.append(rec)
    return out


def _walk(
    drive: TapeDrive, label: Label, sink: _Sink, st: _ScanStats
) -> dict[int, FileRecord | str]:
    """One pass over the cartridge from file 1: per file number, its catalog record (a good
    catalog file about the file before it), ``"data"`` (a data file: its first members — the
    repository's config and keys — are read, the rest spaced over), ``"bad"`` (neither) or
    ``"empty"``."""
    kinds: dict[int, FileRecord | str] = {}
    fileno = 1
    while True:
        reader = BlockReader(drive, label.block_size)
        if reader.empty():
            if reader.at_eod:
                return kinds
            kinds[fileno] = "empty"
            fileno += 1
            continue
        stopped: list[str] = []

        def until(name: str, stopped: list[str] = stopped) -> bool:
            if name.startswith(_BASE) or catalog_file.is_member(name):
                return False
            stopped.append(name)
            return True

        kind: FileRecord | str = "bad"
        try:
            for name, data, _b3 in read_members(reader, until=until):
                if catalog_file.is_member(name):
                    kind = catalog_file.parse(name, data, label.tape_id, fileno - 1)
                elif not sink.have(name):
                    sink.put(name, data)
            if stopped and kind == "bad":
                kind = "data"
        except HostileTape as exc:
            st.warnings.append(f"{label.tape_id} file {fileno}: {exc.get_message()}")
        kinds[fileno] = kind
        st.bytes_read += reader.bytes_read
        if reader.at_eod:
            return kinds
        if not reader.at_filemark:
            try:
                reader.skip_to_filemark()
            except ScsiError:  # a last file cut short (no filemark): end of the cartridge
                return kinds
        fileno += 1


def _read_all_files(
    drive: TapeDrive, label: Label, sink: _Sink, st: _ScanStats
) -> list[FileRecord]:
    out: list[FileRecord] = []
    fileno = 1
    while True:
        rec, eod = _read_file(drive, label, fileno, sink, st)
        if rec is not None:
            out.append(rec)
        if eod:
            return out
        fileno += 1


def _read_file(
    drive: TapeDrive, label: Label, fileno: int, sink: _Sink, st: _ScanStats
) -> tuple[FileRecord | None, bool]:
    """Read data file ``fileno`` (the drive is at its start) in full: (its record from the
    trailer, or rebuilt from the members of a cut file; None for an empty file, at end of data
    or for a catalog file), at end of data."""
    reader = BlockReader(drive, label.block_size)
    if reader.empty():
        return None, reader.at_eod  # an empty file (two filemarks): nothing to catalogue
    seen: dict[str, dict[str, Any]] = {}
    trailer: FileRecord | None = None
    for name, data, b3 in read_members(reader):
        if catalog_file.is_member(name):
            continue  # version 2: the catalog file of the file before (read in full)
        if name.startswith(f"{META_DIR}/") and name != f"{META_DIR}/label.json":
            try:
                trailer = FileRecord.from_json(json.loads(data))
            except (ValueError, TypeError):
                raise HostileTape(f"bad trailer in {label.tape_id} file {fileno}") from None
            continue
        seen[name] = {"size": len(data), **digest_fields(b3)}
        if name.startswith(_BASE) and not sink.have(name):
            sink.put(name, data)
    st.bytes_read += reader.bytes_read
    if not seen:
        if not reader.at_filemark and not reader.at_eod:
            reader.skip_to_filemark()
        return None, reader.at_eod
    st.read += 1
    if not reader.at_filemark and not reader.at_eod:
        reader.skip_to_filemark()
    if trailer is None:
        manifests = [k for k in seen if k.startswith("manifests/")]
        keys = [k for k in seen if not k.startswith(_BASE)]
        trailer = FileRecord(label.tape_id, label.pool, fileno, "scan",
                             label.repository_id or "", label.labelled_at, label.block_size,
                             complete=False, objects=seen,
                             points={m.split("/")[1].split(".")[0]: keys for m in manifests})
    return trailer, reader.at_eod
