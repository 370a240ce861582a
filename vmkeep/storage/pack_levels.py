"""The zstd levels packs record: a summary for ``check`` and ``stats --levels``.

Each zstd blob's pack entry names the level it was compressed at (:mod:`vmkeep.storage.pack`;
the image data path picks a stronger level while it waits for reads, the repository's level
while it is CPU-bound).  A pack's **levels** are those of its zstd blobs; packs written before
levels were recorded, and zstd blobs in them, count as ``"unrecorded"``; a pack without zstd
blobs (raw data, recipes) as ``"none"``.  A compression unit (repository version 4) counts as
one zstd blob, whatever the number of pieces inside it.

Summary (JSON)::

    {"blobs": {"1": 812, "3": 120, "unrecorded": 0},      # zstd blobs per level
     "packs": {"1": 20, "1,3": 3, "3": 1, "none": 4}}     # packs per set of levels

Reading: one ranged read of each pack's tail (:func:`~vmkeep.storage.pack.read_trailer`), in
parallel; payloads are never read.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vmkeep.storage.codec import CODEC_UNIT, CODEC_ZSTD
from vmkeep.storage.errors import ObjectNotFound
from vmkeep.storage.pack import PackEntry, list_packs, pack_id_from_key, read_trailer

if TYPE_CHECKING:
    from collections.abc import Iterable

    from vmkeep.storage.repository import Repository

UNRECORDED = "unrecorded"
NONE = "none"
#: Concurrent tail reads (remote targets are latency-bound).
READERS = 8


@dataclass
class LevelSummary:
    """zstd blobs per level and packs per set of levels (see the module docstring)."""

    blobs: Counter[str] = field(default_factory=Counter)
    packs: Counter[str] = field(default_factory=Counter)

    def add_pack(self, entries: Iterable[PackEntry]) -> str:
        """Count one pack's entries; returns the pack's key in :attr:`packs`."""
        levels: set[int] = set()
        unrecorded = False
        units: set[int] = set()
        for e in entries:
            if e.codec == CODEC_UNIT:  # one zstd payload per unit, whatever its pieces
                if e.offset in units:
                    continue
                units.add(e.offset)
            elif e.codec != CODEC_ZSTD:
                continue
            if e.level is None:
                unrecorded = True
                self.blobs[UNRECORDED] += 1
            else:
                levels.add(e.level)
                self.blobs[str(e.level)] += 1
        names = [str(level) for level in sorted(levels)] + ([UNRECORDED] if unrecorded else [])
        key = ",".join(names) or NONE
        self.packs[key] += 1
        return key

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"blobs": _ordered(self.blobs), "packs": _ordered(self.packs)}

    def describe(self) -> str:
        """One line, e.g. ``zstd blobs by level: 1 ×812, 3 ×120; packs: 1 ×20, 1,3 ×3``."""
        blobs = ", ".join(f"{k} ×{v}" for k, v in _ordered(self.blobs).items()) or "none"
        packs = ", ".join(f"{k} ×{v}" for k, v in _ordered(self.packs).items()) or "none"
        return f"zstd blobs by level: {blobs}; packs by levels: {packs}"


def _ordered(counts: Counter[str]) -> dict[str, int]:
    def order(key: str) -> tuple[int, list[int], str]:
        try:
            return (0, [int(p) for p in key.split(",")], key)
        except ValueError:
            return (1, [], key)

    return {k: counts[k] for k in sorted(counts, key=order)}


def pack_levels(repo: Repository) -> tuple[LevelSummary, dict[str, str]]:
    """Read every pack's trailer: ``(summary, {pack hex id: its levels key})``.  A pack that
    vanished since the listing is skipped; an unreadable trailer raises (``check`` reports
    those)."""
    packs = [(pack_id_from_key(k), size) for k, size in list_packs(repo.backend)]

    def tail(item: tuple[bytes, int]) -> list[PackEntry] | None:
        try:
            return read_trailer(repo.backend, item[0], item[1], repo.cipher)
        except ObjectNotFound:
            return None

    summary = LevelSummary()
    per_pack: dict[str, str] = {}
    with ThreadPoolExecutor(READERS, thread_name_prefix="vmkeep-levels") as pool:
        for (pack_id, _size), entries in zip(packs, pool.map(tail, packs), strict=True):
            if entries is not None:
                per_pack[pack_id.hex()] = summary.add_pack(entries)
    return summary, per_pack


def levels_json(summary: LevelSummary, per_pack: dict[str, str]) -> dict[str, Any]:
    """``stats --levels --json``: the summary and each pack's levels."""
    return {**summary.to_json(), "per_pack": dict(sorted(per_pack.items()))}
