"""``vmkeep diff A B``: what changed between two restore points (restic's and borg's ``diff``).

Both points must be image/VM points, or both file points.  What is compared:

* **entries** (files, directories, links) by volume and path, from the points' file-name
  catalogs (image/VM points: :mod:`vmkeep.browse.catalog`, built on first use like ``find``
  does) or their file manifests (file points): ``+`` only in B, ``-`` only in A, ``T`` an entry
  whose type changed, ``M`` modified — for image points a file or link whose size or
  modification time differs; for file points one whose content differs (its chunk ids) or a
  link whose target does — and, file points only, ``U`` an entry whose content is the same but
  whose time, mode or owner changed (restic's "metadata updated").  A directory is reported
  only when it appears or goes (its own time changes with every entry);
* **disks** (image/VM points): the bytes of each disk whose chunks differ between the two
  points — exact, from the chunk ids, nothing is read or decoded.  A disk whose layout differs
  (resized, another chunk size) or that exists in one point only counts whole.

For image points the comparison is by metadata: the contents of a file that kept its size and
time are not compared (catalogs hold no contents); it finds what an administrator looks for
after an unusual change warning — files encrypted, renamed or deleted in bulk.  Volumes a
catalog could not walk in full are named in ``warnings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vmkeep.browse.catalog import (
    IMAGE_KINDS,
    catalog_warnings,
    file_point_table,
    index_point_files,
    text_path,
)
from vmkeep.errors import UsageError
from vmkeep.storage.errors import DataCorrupt
from vmkeep.storage.manifest import point_key
from vmkeep.storage.point_copy import differing_extents
from vmkeep.storage.repository import DamagedPoint, PointSummary, Repository

ADDED, REMOVED, MODIFIED, METADATA, TYPE_CHANGED = "+", "-", "M", "U", "T"


@dataclass(frozen=True)
class EntryChange:
    """One entry that differs; sizes are those of files (None where the entry is absent)."""

    change: str
    volume: str | None
    path: str
    type: str
    size_before: int | None
    size_after: int | None

    @property
    def where(self) -> str:
        """``disk0-p1/etc/hosts`` (image points, as ``ls POINT:VOLUME/PATH`` takes it) or
        ``/etc/hosts`` (file points)."""
        return f"{self.volume}{self.path}" if self.volume else self.path

    def to_json(self) -> dict[str, Any]:
        return {"change": self.change, "volume": self.volume, "path": self.path,
                "type": self.type, "size_before": self.size_before,
                "size_after": self.size_after}


@dataclass(frozen=True)
class DiskChange:
    """One disk: its size in B and the bytes whose chunks differ from A's."""

    index: int
    name: str
    size: int
    changed_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "size": self.size,
                "changed_bytes": self.changed_bytes}


@dataclass
class PointDiff:
    before: PointSummary
    after: PointSummary
    disks: list[DiskChange] = field(default_factory=list)
    entries: list[EntryChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        files = [e for e in self.entries if e.type != "dir"]
        return {
            "added": sum(e.change == ADDED for e in self.entries),
            "removed": sum(e.change == REMOVED for e in self.entries),
            "modified": sum(e.change == MODIFIED for e in self.entries),
            "metadata_changed": sum(e.change == METADATA for e in self.entries),
            "type_changed": sum(e.change == TYPE_CHANGED for e in self.entries),
            "bytes_added": sum(e.size_after or 0 for e in files if e.change == ADDED),
            "bytes_removed": sum(e.size_before or 0 for e in files if e.change == REMOVED),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "before": self.before.to_json(), "after": self.after.to_json(),
            **self.counts(),
            "disks": [d.to_json() for d in self.disks],
            "entries": [e.to_json() for e in self.entries],
            "warnings": self.warnings,
        }


#: Columns compared: the catalog's, plus (file points only) ``content`` — a file's chunk ids, a
#: link's target — and ``attrs`` — mode, owner, group — which image catalogs do not hold (null).
COLUMNS = ["volume", "path", "type", "size", "mtime_ns", "content", "attrs"]


def _table(repo: Repository, point: PointSummary, warnings: list[str]) -> pa.Table:
    if point.kind in IMAGE_KINDS:
        table, _built = index_point_files(repo, point.id)
        warnings.extend(f"{point.id[:8]}: {w}" for w in catalog_warnings(table))
        rows = len(table)
        table = table.append_column("content", pa.nulls(rows, pa.binary())).append_column(
            "attrs", pa.nulls(rows, pa.string()))
    else:
        table = _file_table(repo, point.id)
    # file points have no volume: "" so that the join matches them (nulls never match)
    table = table.set_column(0, "volume", pc.fill_null(table.column("volume"), ""))
    return table.select(COLUMNS)


def _file_table(repo: Repository, point_id: str) -> pa.Table:
    """A file point's entries with their content (chunk ids) and attributes."""
    from vmkeep.storage.file_manifest import load_file_point

    table = file_point_table(repo, point_id)
    entries = load_file_point(repo, point_id).entries
    content = [e.link or b"" if e.type == "symlink" else e.chunk_ids for e in entries]
    attrs = [f"{e.mode}:{e.owner or e.uid}:{e.group or e.gid}" for e in entries]
    return table.append_column("content", pa.array(content, pa.binary())).append_column(
        "attrs", pa.array(attrs, pa.string()))


def _differs(joined: pa.Table, column: str) -> pa.ChunkedArray:
    """Rows whose ``column`` differs between A and B (null on both sides: not different)."""
    a, b = joined.column(f"{column}_a"), joined.column(f"{column}_b")
    return pc.fill_null(pc.not_equal(a, b), False)


def _change(row: dict[str, Any]) -> str | None:
    """The change of one joined row (None: nothing to report)."""
    if row["type_a"] is None:
        return ADDED
    if row["type_b"] is None:
        return REMOVED
    if row["type_a"] != row["type_b"]:
        return TYPE_CHANGED
    if row["type_a"] == "dir":
        return None  # a directory's own time changes with every entry: noise
    if row["content_a"] is not None and row["content_b"] is not None:  # file points
        return MODIFIED if row["content_a"] != row["content_b"] else METADATA
    return MODIFIED  # image points: size or time differ


def _entries(before: pa.Table, after: pa.Table) -> list[EntryChange]:
    joined = before.join(after, keys=["volume", "path"], join_type="full outer",
                         left_suffix="_a", right_suffix="_b")
    missing = pc.or_(pc.is_null(joined.column("type_a")), pc.is_null(joined.column("type_b")))
    candidates = missing
    for column in ("type", "size", "mtime_ns", "content", "attrs"):
        candidates = pc.or_(candidates, _differs(joined, column))
    out = []
    for row in joined.filter(candidates).to_pylist():
        change = _change(row)
        if change is None:
            continue
        kind = row["type_b"] if row["type_b"] is not None else row["type_a"]
        out.append(EntryChange(
            change, row["volume"] or None, text_path(row["path"]), kind,
            row["size_a"] if row["type_a"] == "file" else None,
            row["size_b"] if row["type_b"] == "file" else None,
        ))
    out.sort(key=lambda e: (e.volume or "", e.path))
    return out


def _disks(repo: Repository, before: PointSummary, after: PointSummary) -> list[DiskChange]:
    a, b = repo.load_point(before.id), repo.load_point(after.id)
    old = {d.index: d for d in a.disks}
    changes = []
    for disk in b.disks:
        table = b.chunks[disk.index]
        extents = differing_extents(table, a.chunks[disk.index]) if disk.index in old else None
        changed = disk.size if extents is None else sum(length for _, length in extents)
        changes.append(DiskChange(disk.index, disk.name, disk.size, changed))
    return changes


def diff_points(repo: Repository, before_ref: str, after_ref: str) -> PointDiff:
    """Compare restore points ``before_ref`` and ``after_ref`` (ids, prefixes, ``NAME@latest``)
    as the module docstring says.  Raises :class:`UsageError` for points of different kinds."""
    damaged: list[DamagedPoint] = []
    points = {p.id: p for p in repo.list_points(damaged=damaged)}
    ids = [repo.resolve(ref) for ref in (before_ref, after_ref)]
    reasons = {d.id: d.reason for d in damaged}
    for point_id in ids:
        if point_id not in points:  # resolved, but not listable: damaged (as ls says)
            raise DataCorrupt(point_key(point_id),
                              reasons.get(point_id, "its manifest cannot be read"))
    before, after = (points[point_id] for point_id in ids)
    image = before.kind in IMAGE_KINDS
    if image != (after.kind in IMAGE_KINDS) or (not image and before.kind != after.kind):
        raise UsageError(f"cannot compare a point of kind {before.kind} with one of kind "
                         f"{after.kind}")
    result = PointDiff(before, after)
    result.entries = _entries(_table(repo, before, result.warnings),
                              _table(repo, after, result.warnings))
    if image:
        result.disks = _disks(repo, before, after)
    return result
