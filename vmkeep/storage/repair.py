"""``vmkeep repair index``: rebuild the index files from the packs' own contents tables.

Why: every pack ends with a trailer that lists each blob it holds (keyed id, offset, lengths,
codec; docs/format.md "Packs"), so the index is a derived copy.  When index files are lost
(deleted by hand, a target that lost objects), unreadable (a damaged Parquet file makes every
command that loads the index fail) or wrong (an entry that does not match its pack), the data is
still in the packs; this rebuilds the index from them, like ``restic repair index``.

What it does, under the ``prune`` lock (one prune or repair at a time; backups, restores and
checks go on beside it):

1. lists the index files (the *old* ones) and reads each it can: the packs each lists;
2. lists the packs and the garbage collector's records (:mod:`vmkeep.storage.gc`).  A pack is
   indexed when an old readable index file lists it, or when no record says prune unlisted it
   (a pack prune unlisted, and that no index file lists, is on its way to deletion and must not
   come back into the index: a backup could deduplicate against it);
3. reads the trailer of every such pack (ranged reads of its tail, never its payloads); a pack
   whose trailer cannot be read is reported (``unreadable_packs``, exit code 13) and the old
   index files that list it are kept — they may be the only map into its payloads;
4. writes new index files (:data:`INDEX_ROWS` entries each, the repository's index version), then
   deletes the old ones (except those kept, and those whose name the new content gives again).

Crash safety: the new files are stored before any old one is deleted, and several index files
may list the same blob, so a kill at any point leaves every chunk listed at least once.  A backup
that commits meanwhile writes an index file this run did not list: it is left alone.  Readers
that find a listed index file gone list again (:meth:`Repository.load_index`).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xxhash import xxh3_64_intdigest

from vmkeep.storage.errors import IndexUnreadable, StorageError
from vmkeep.storage.gc import UNLISTED, load_records
from vmkeep.storage.index import encode_index, read_index
from vmkeep.storage.locks import PRUNE
from vmkeep.storage.pack import PackEntry, list_packs, pack_id_from_key, read_trailer
from vmkeep.storage.repository import Repository

#: entries per new index file (as prune writes them)
INDEX_ROWS = 500_000
#: old index rows turned into Python values at a time
SLICE_ROWS = 65_536


@dataclass
class IndexRepair:
    """What ``repair index`` found and did (``--json``: :meth:`to_json`)."""

    packs: int = 0
    entries: int = 0
    #: packs that no readable old index file listed, indexed now
    packs_newly_indexed: list[str] = field(default_factory=list)
    #: old index entries that named a pack's blob with other offsets, lengths or codec (or a
    #: blob the pack does not hold), now replaced by the pack's own entries
    entries_corrected: int = 0
    #: old index files that could not be read (now replaced)
    unreadable_indexes: list[str] = field(default_factory=list)
    #: packs whose trailer could not be read: ``{pack id: reason}``
    unreadable_packs: dict[str, str] = field(default_factory=dict)
    #: packs left out: recorded as unlisted by prune and listed by no index file
    packs_left_to_prune: int = 0
    #: packs an old index file listed that are not stored (their entries are dropped: those
    #: chunks are lost unless another pack holds them; a backup reading the data stores it again)
    packs_missing: list[str] = field(default_factory=list)
    indexes_written: int = 0
    indexes_deleted: int = 0
    indexes_kept: int = 0

    @property
    def ok(self) -> bool:
        return not self.unreadable_packs

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "packs": self.packs,
            "entries": self.entries,
            "packs_newly_indexed": self.packs_newly_indexed,
            "entries_corrected": self.entries_corrected,
            "unreadable_indexes": self.unreadable_indexes,
            "unreadable_packs": self.unreadable_packs,
            "packs_left_to_prune": self.packs_left_to_prune,
            "packs_missing": self.packs_missing,
            "indexes_written": self.indexes_written,
            "indexes_deleted": self.indexes_deleted,
            "indexes_kept": self.indexes_kept,
        }


def repair_index(
    repo: Repository, *, progress: Callable[[int], None] | None = None, lock: bool = True
) -> IndexRepair:
    """Rebuild ``repo``'s index from its packs' trailers (see the module docstring).
    ``progress`` is called with each pack's size once its trailer was read.  Takes the ``prune``
    lock unless ``lock`` is false (the caller holds it)."""
    held = repo.lock(PRUNE, command="repair index") if lock else None
    try:
        return _repair(repo, progress)
    finally:
        if held is not None:
            held.release()


def _repair(repo: Repository, progress: Callable[[int], None] | None) -> IndexRepair:
    import pyarrow.compute as pc

    report = IndexRepair()
    old: dict[str, set[bytes] | None] = {}  # index key -> packs it lists (None: unreadable)
    # per pack, a 64-bit fingerprint of each old entry (8 bytes a row, whatever the repository's
    # size): compared with the pack's own entries when its trailer is read
    old_entries: dict[bytes, array[int]] = {}
    for key, _size in list(repo.backend.list("index")):
        try:
            table = read_index(repo.backend, key)
        except IndexUnreadable:  # damaged: replaced (an unsupported version stops the repair)
            old[key] = None
            report.unreadable_indexes.append(key)
            continue
        old[key] = set(pc.unique(table.column("pack_id")).to_pylist())
        for start in range(0, table.num_rows, SLICE_ROWS):  # Python objects a slice at a time
            part = table.slice(start, SLICE_ROWS)
            columns = [part.column(name).to_pylist() for name in _ROW_COLUMNS]
            for row in zip(*columns, strict=True):
                old_entries.setdefault(row[1], array("Q")).append(_fingerprint(*row))
        del table
    listed = {p for packs in old.values() if packs for p in packs}
    unlisted = {p for r in load_records(repo.backend) if r.state == UNLISTED for p in r.packs}
    present = {pack_id_from_key(k): size for k, size in list_packs(repo.backend)}
    wanted = {p: size for p, size in present.items() if p in listed or p not in unlisted}
    report.packs_left_to_prune = len(present) - len(wanted)
    report.packs_missing = sorted(p.hex() for p in listed if p not in present)

    # new index files are written as trailers are read, INDEX_ROWS entries at a time
    written: set[str] = set()
    batch: list[tuple[bytes, PackEntry]] = []

    def flush() -> None:
        key, data = encode_index(batch, repo.index_version)
        repo.backend.put(key, data)
        written.add(key)
        report.indexes_written += 1
        report.entries += len(batch)
        batch.clear()

    for pack_id, size in sorted(wanted.items()):
        try:
            found = read_trailer(repo.backend, pack_id, size, repo.cipher)
        except StorageError as exc:
            report.unreadable_packs[pack_id.hex()] = str(exc)
            continue
        finally:
            if progress is not None:
                progress(size)
        report.packs += 1
        if pack_id not in listed:
            report.packs_newly_indexed.append(pack_id.hex())
        own = {
            _fingerprint(e.blob_id, pack_id, e.offset, e.stored_length, e.raw_length, e.codec,
                         e.unit_offset, e.unit_length)
            for e in found
        }
        report.entries_corrected += sum(f not in own for f in old_entries.pop(pack_id, ()))
        batch.extend((pack_id, e) for e in found)
        if len(batch) >= INDEX_ROWS:
            flush()
    if batch:
        flush()

    failed = {bytes.fromhex(p) for p in report.unreadable_packs}
    for key, lists in old.items():
        if key in written:
            continue
        if lists is not None and lists & failed:
            report.indexes_kept += 1  # the only map into a pack whose trailer is unreadable
            continue
        repo.backend.delete(key)
        report.indexes_deleted += 1
    repo._index = None  # the next use loads the new files
    return report


_ROW_COLUMNS = ("blob_id", "pack_id", "offset", "stored_length", "raw_length", "codec",
                "unit_offset", "unit_length")
_ROW = struct.Struct("<QIIBII")


def _fingerprint(
    blob: bytes, pack: bytes, offset: int, stored: int, raw: int, codec: int, unit_offset: int,
    unit_length: int,
) -> int:
    """A 64-bit digest of one index entry (all of its columns)."""
    return xxh3_64_intdigest(
        blob + pack + _ROW.pack(offset, stored, raw, codec, unit_offset, unit_length)
    )
