"""Where a regular file holds data: :func:`data_ranges` (``SEEK_DATA`` / ``SEEK_HOLE``).

The one place vmkeep asks a file system for a file's holes — disk images read as flat extents
(:mod:`vmkeep.disks.image`) and sparse files of file backups (:mod:`vmkeep.guestfiles.local`).

Contract: ``(offset, length)`` ranges in order, not overlapping, within ``[0, end)``; every byte
outside them reads as zero.  A file system without ``SEEK_DATA`` (or a descriptor that is not a
regular file) answers with the whole rest as data, so callers may always read what is listed and
treat the rest as holes.  Granularity is the file system's: a range may hold zeros too.  Reads
nothing; the file may change meanwhile (callers compare sizes afterwards).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator


def data_ranges(fd: int, end: int) -> Iterator[tuple[int, int]]:
    """Data ranges of the open regular file ``fd`` up to ``end`` (see the module contract)."""
    pos = 0
    try:
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    return
                raise
            if data >= end:
                return
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            yield (data, hole - data)
            pos = hole
    except (OSError, AttributeError):  # no SEEK_DATA here: all of the rest may be data
        yield (pos, end - pos)
