"""What a search for areas a backup may record as zeros found (swap: :mod:`vmkeep.disks.swap`,
deleted blocks: :mod:`vmkeep.disks.deleted_blocks`): the areas, each ``offset``/``length`` bytes
of the disk, and notes on what the search left whole.  Each search adds its own ``record()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Area(Protocol):
    @property
    def offset(self) -> int: ...

    @property
    def length(self) -> int: ...


A = TypeVar("A", bound=Area)


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
