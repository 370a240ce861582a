"""A read-only view of a stream with some of its bytes replaced: :class:`Overlay`.

Used where a damaged structure has an intact copy elsewhere on the disk: the parser reads the
view, with the copy in the damaged one's place (a backup GPT, a backup boot sector), while the
data is still read from the disk itself.  Contract: reads past the stream's end are short, as the
stream's; ``patch`` may extend beyond the stream's bytes only up to ``size``; nothing is written.
"""

from __future__ import annotations

import io
from typing import BinaryIO, cast


class Overlay(io.RawIOBase):
    """``inner`` (``size`` bytes) with ``patch`` in place of its bytes from offset ``at`` on."""

    def __init__(self, inner: BinaryIO, size: int, at: int, patch: bytes) -> None:
        self.inner, self.size, self.at, self.patch, self.pos = inner, size, at, patch, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buf).cast("B")
        self.inner.seek(self.pos)
        data = bytearray(self.inner.read(min(len(view), max(0, self.size - self.pos))))
        lo, hi = max(self.pos, self.at), min(self.pos + len(data), self.at + len(self.patch))
        if lo < hi:
            data[lo - self.pos : hi - self.pos] = self.patch[lo - self.at : hi - self.at]
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)


def overlay(inner: BinaryIO, size: int, at: int, patch: bytes) -> BinaryIO:
    """An :class:`Overlay` typed as the binary stream it stands in for."""
    return cast(BinaryIO, Overlay(inner, size, at, patch))
