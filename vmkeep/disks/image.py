"""A whole virtual disk as one read-only, seekable binary stream built from extents.

Contract:

- :class:`DiskImage` is an ``io.RawIOBase`` (``read``, ``readinto``, ``seek``, ``tell``) with a
  ``size`` in bytes, concatenating one or more :class:`Extent` objects (raw byte ranges of a
  file-like object, zero-filled ranges, or sparse VMDK extents from
  :mod:`vmkeep.disks.vmdk.sparse`).
- :meth:`DiskImage.allocated_extents` returns sorted, merged ``(offset, length)`` ranges that may
  hold data; everything outside them reads as zeros.  When allocation is unknowable the whole disk
  is reported.
- Reads past the end return ``b""``; reads never touch anything but the extents' own file-likes.
- ``close()`` closes only the handles the image was given ownership of.
- Never opens a path itself: :mod:`vmkeep.disks.vmdk` decides what to open.
"""

from __future__ import annotations

import io
import os
import stat
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from dissect.util.stream import AlignedStream

from vmkeep.disks.errors import DiskFormatError
from vmkeep.holes import data_ranges

ALIGN = 64 * 1024


def stream_size(fh: BinaryIO) -> int:
    """Size in bytes of a seekable file-like: its ``size`` attribute, else seek to the end."""
    size = getattr(fh, "size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    pos = fh.tell()
    end = fh.seek(0, io.SEEK_END)
    if end is None:
        end = fh.tell()
    fh.seek(pos)
    return int(end)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge adjacent or overlapping ``(offset, length)`` ranges; drop empty ones."""
    out: list[tuple[int, int]] = []
    for off, length in sorted(r for r in ranges if r[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            last_off, last_len = out[-1]
            out[-1] = (last_off, max(last_len, off + length - last_off))
        else:
            out.append((off, length))
    return out


class Extent:
    """A contiguous piece of the disk: ``size`` bytes read by :meth:`read`."""

    size: int = 0

    def read(self, offset: int, length: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def allocated(self) -> Iterator[tuple[int, int]]:
        """Ranges (relative to the extent) that may hold non-zero data."""
        yield (0, self.size)

    def close(self) -> None:
        """Release resources owned by the extent."""


class ZeroExtent(Extent):
    """A range that reads as zeros (VMDK ``ZERO`` extents)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        return bytes(max(0, min(length, self.size - offset)))

    def allocated(self) -> Iterator[tuple[int, int]]:
        return iter(())


class RawExtent(Extent):
    """``size`` bytes of ``fh`` starting at ``start`` (a flat extent or a raw image)."""

    def __init__(self, fh: BinaryIO, start: int, size: int, *, owned: bool = False) -> None:
        self.fh, self.start, self.size, self.owned = fh, start, size, owned

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        self.fh.seek(self.start + offset)
        data = self.fh.read(length)
        if len(data) < length:  # the file shrank under us: never invent data silently
            raise DiskFormatError(getattr(self.fh, "name", "extent"), "short read in flat extent")
        return data

    def allocated(self) -> Iterator[tuple[int, int]]:
        custom = getattr(self.fh, "allocated_extents", None)
        if callable(custom):
            yield from _clip(custom(), self.start, self.size)
            return
        fd = _real_fd(self.fh)
        if fd is None:
            yield (0, self.size)
            return
        yield from _clip(data_ranges(fd, self.start + self.size), self.start, self.size)

    def close(self) -> None:
        if self.owned:
            self.fh.close()


def _real_fd(fh: BinaryIO) -> int | None:
    try:
        fd = fh.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _clip(ranges: Iterable[tuple[int, int]], start: int, size: int) -> Iterator[tuple[int, int]]:
    for off, length in ranges:
        lo, hi = max(off, start), min(off + length, start + size)
        if hi > lo:
            yield (lo - start, hi - lo)


class DiskImage(AlignedStream):
    """Read-only stream over a disk made of extents; see the module docstring."""

    def __init__(
        self,
        name: str,
        extents: list[Extent],
        fmt: str,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.name, self.format, self.extents = name, fmt, extents
        self._starts: list[int] = []
        total = 0
        for ext in extents:
            self._starts.append(total)
            total += ext.size
        self._on_close = on_close
        self._released = False
        super().__init__(total, ALIGN)

    def __repr__(self) -> str:
        return f"<DiskImage {self.name!r} format={self.format} size={self.size}>"

    def _read(self, offset: int, length: int) -> bytes:
        out: list[bytes] = []
        end = min(offset + length, self.size or 0)
        idx = bisect_right(self._starts, offset) - 1
        while offset < end and 0 <= idx < len(self.extents):
            ext, base = self.extents[idx], self._starts[idx]
            n = min(end, base + ext.size) - offset
            if n > 0:
                out.append(ext.read(offset - base, n))
                offset += n
            idx += 1
        return b"".join(out)

    def allocated_extents(self) -> list[tuple[int, int]]:
        """Merged ``(offset, length)`` ranges that may hold data (the rest reads as zeros)."""
        ranges: list[tuple[int, int]] = []
        for ext, base in zip(self.extents, self._starts, strict=True):
            ranges.extend((base + off, length) for off, length in ext.allocated())
        return merge_ranges(ranges)

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        for ext in self.extents:
            ext.close()
        if self._on_close is not None:
            self._on_close()
        super().close()

    def __enter__(self) -> DiskImage:
        return self
