"""A file restore point of one repository as the source of a file backup into another: what
``vmkeep copy`` reads file points through.

:class:`PointSource` implements :class:`~vmkeep.storage.file_backup.FileSource`: ``walk`` gives
the point's entries in their stored order (already the data path's order) with every recorded
attribute — type, mode, owners, times, inode, device, links, xattrs — so the destination's
change detection against its previous copy reuses every file whose entry is unchanged without
opening it; ``open`` streams a file's content from the source repository chunk by chunk
(authenticated by their keyed ids); ``sparse_layout`` gives a file's zero runs back as holes, so
they stay zero runs in the copy.  Hard links are handed over as groups by ``(dev, inode)``, as a
walker of a live tree does; a point that recorded links without inodes (none of vmkeep's sources
does that) gets each linked file as its own copy of the content.

A chunk the source cannot deliver makes the file unreadable for the data path (it is left out and
listed); the copy job refuses to commit a point with such a file
(:class:`~vmkeep.storage.point_copy.CopySourceDamaged`).  Nothing here writes anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import BinaryIO, cast

from vmkeep.guestfiles.tree import ChunkStream
from vmkeep.storage.codec import ID_SIZE, ZERO_ID
from vmkeep.storage.file_backup import Warn
from vmkeep.storage.file_manifest import FileEntry, FilePoint
from vmkeep.storage.repository import Repository


class PointSource:
    """Source ``point`` of ``repo`` as a :class:`~vmkeep.storage.file_backup.FileSource`."""

    has_xattrs = True

    def __init__(self, repo: Repository, point: FilePoint) -> None:
        self.repo, self.point = repo, point
        self.location = f"restore point {point.short_id} of {repo.backend.location}"
        self._entries = point.entries
        self._rows = {e.path: i for i, e in enumerate(self._entries)}

    def walk(self, warn: Warn) -> Iterator[FileEntry]:
        for e in self._entries:
            linked = -1 if e.hardlink is not None and e.inode is not None else None
            yield replace(e, hardlink=linked, xattrs=None, chunk_ids=b"", chunk_lengths=[])

    def _entry(self, entry: FileEntry) -> FileEntry:
        return self._entries[self._rows[entry.path]]

    def open(self, entry: FileEntry) -> BinaryIO:
        stored = self._entry(entry)
        return cast(BinaryIO, ChunkStream(self.repo, stored, stored.path.decode(errors="replace")))

    def changed(self, entry: FileEntry, f: BinaryIO, nread: int) -> str | None:
        """A restore point does not change; a short read is a damaged one."""
        size = self._entry(entry).size
        return None if nread == size else f"read {nread} of {size} bytes"

    def read_xattrs(self, entry: FileEntry) -> list[tuple[bytes, bytes]] | None:
        return self._entry(entry).xattrs

    def sparse_layout(self, f: BinaryIO) -> tuple[int, list[tuple[int, int]]] | None:
        """``(size, data ranges)`` of a file with zero runs, None for one without."""
        stored: FileEntry = cast(ChunkStream, f).fe
        ids = stored.chunk_ids
        data: list[tuple[int, int]] = []
        pos, holes = 0, False
        for k, length in enumerate(stored.chunk_lengths):
            if ids[k * ID_SIZE : (k + 1) * ID_SIZE] == ZERO_ID:
                holes = True
            elif data and sum(data[-1]) == pos:
                data[-1] = (data[-1][0], data[-1][1] + length)
            else:
                data.append((pos, length))
            pos += length
        return (stored.size, data) if holes else None
