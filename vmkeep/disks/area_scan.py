"""What a search for areas a backup may record as zeros found (swap: :mod:`vmkeep.disks.swap`,
deleted blocks: :mod:`vmkeep.disks.deleted_blocks`): the areas, each ``offset``/``length`` bytes
of the disk, and notes on what the search left whole.  Each search adds its own ``record()``.

Both search the volumes of a VM's disks together (:func:`search_volumes`): a volume group
spanning the disks is whole, and what a search finds in a logical volume is mapped onto each
disk its segments lie on (:meth:`~vmkeep.disks.volumes.Volume.disks_extents`).  Each disk is
read through a :class:`BudgetedPreadFile`: a search reads at most its budget of guest metadata
per disk."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Generic, NamedTuple, Protocol, TypeVar

from vmkeep.disks.overlay import StreamView
from vmkeep.disks.pread import Pread
from vmkeep.disks.volumes import VolumeList, add_logical_volumes, partition_volumes

PAGE = 4096


class SearchedDisk(NamedTuple):
    """A disk a search reads: its name (the key of the results), a ``pread`` over it, its size."""

    name: str
    pread: Pread
    size: int


class SearchBudgetExceeded(Exception):
    """The search read more guest metadata than its budget allows."""


class BudgetedPreadFile(StreamView):
    """A read-only seekable file over ``pread`` (what the volume listing takes) that stops
    with :class:`SearchBudgetExceeded` once ``budget`` bytes have been read."""

    def __init__(self, pread: Pread, size: int, budget: int) -> None:
        super().__init__(size)
        self._pread, self._budget, self._limit = pread, budget, budget

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), self.size - self.pos))
        self._budget -= n
        if self._budget < 0:
            raise SearchBudgetExceeded(f"more than {self._limit} bytes of metadata read")
        data = self._pread(self.pos, n) if n else b""
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def search_volumes(disks: Sequence[SearchedDisk], budget: int
                   ) -> tuple[dict[str, VolumeList], dict[str, list[str]]]:
    """The volumes of ``disks``, volume groups put together across
    them, each disk read within ``budget`` bytes; and each disk's notes so far (empty lists,
    but for a disk whose volumes cannot be read: why — its volumes are left out, as are every
    disk's when the volume groups cannot be put together)."""
    lists: dict[str, VolumeList] = {}
    notes: dict[str, list[str]] = {name: [] for name, _, _ in disks}
    for name, pread, size in disks:
        try:
            lists[name] = partition_volumes(
                io.BufferedReader(BudgetedPreadFile(pread, size, budget), PAGE), name)
        except Exception as exc:  # an unreadable table, the budget spent
            notes[name].append(f"volumes not readable ({exc}): nothing excluded")
    try:
        add_logical_volumes(lists)
    except Exception as exc:
        for name in lists:
            notes[name].append(f"volume groups not readable ({exc}): nothing excluded")
        return {}, notes
    return lists, notes


def on_disks(mapped: dict[str, list[tuple[int, int]]] | None,
             disks: Sequence[SearchedDisk]) -> dict[str, list[tuple[int, int]]] | None:
    """``mapped`` (disk ranges per disk name) when every range lies inside its disk, else
    ``None``: a volume's metadata (an LV's segments) may claim more than the disk holds."""
    if mapped is None:
        return None
    sizes = {name: size for name, _, size in disks}
    inside = all(off >= 0 and n >= 0 and off + n <= sizes.get(disk, -1)
                 for disk, ranges in mapped.items() for off, n in ranges)
    return mapped if inside else None


class Area(Protocol):
    @property
    def offset(self) -> int: ...

    @property
    def length(self) -> int: ...


A = TypeVar("A", bound=Area)


def disjoint(areas: list[A], notes: list[str], label: Callable[[A], str]
             ) -> tuple[list[A], list[str]]:
    """One disk's areas sorted, with its notes — or none at all when two overlap (two volumes
    or files claim the same bytes: the guest's metadata cannot both be right), with a note
    naming them by ``label``."""
    areas = sorted(areas, key=lambda a: a.offset)
    for a, b in pairwise(areas):
        if b.offset < a.offset + a.length:
            return [], [*notes, f"{label(a)} and {label(b)} overlap: nothing excluded"]
    return areas, notes


@dataclass
class AreaScan(Generic[A]):
    """The areas a search found (sorted, disjoint) and its notes."""

    areas: list[A]
    notes: list[str]

    @property
    def total(self) -> int:
        return sum(a.length for a in self.areas)

    @property
    def extents(self) -> list[tuple[int, int]]:
        """The areas as ``(offset, length)`` (what a read plan's ``zeroed`` takes)."""
        return [(a.offset, a.length) for a in self.areas]
