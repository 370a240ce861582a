"""Read-only views of a stream: :class:`Overlay` (some bytes replaced) and :class:`ZeroTail`
(zeros past a length).

An overlay is used where a damaged structure has an intact copy elsewhere on the disk: the parser
reads the view, with the copy in the damaged one's place (a backup GPT, a backup boot sector),
while the data is still read from the disk itself.  Contract: reads past ``size`` are short;
``patch`` may extend beyond the stream's bytes only up to ``size``; nothing is written.
"""

from __future__ import annotations

import io
from typing import BinaryIO, cast


class StreamView(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes; subclasses fill ``readinto``."""

    def __init__(self, size: int) -> None:
        self.size, self.pos = size, 0

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


class Overlay(StreamView):
    """``inner`` (``size`` bytes) with ``patch`` in place of its bytes from offset ``at`` on."""

    def __init__(self, inner: BinaryIO, size: int, at: int, patch: bytes) -> None:
        super().__init__(size)
        self.inner, self.at, self.patch = inner, at, patch

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


class ZeroTail(StreamView):
    """``valid`` bytes of ``inner`` followed by zeros up to ``size`` (exFAT's bytes past a
    file's ``ValidDataLength``, which Windows returns as zeros)."""

    def __init__(self, inner: BinaryIO, valid: int, size: int) -> None:
        super().__init__(size)
        self.inner, self.valid = inner, valid

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        stored = max(0, min(n, self.valid - self.pos))
        if stored:
            self.inner.seek(self.pos)
            data = self.inner.read(stored)
            view[: len(data)] = data
            stored = len(data)
        view[stored:n] = bytes(n - stored)
        self.pos += n
        return n


def overlay(inner: BinaryIO, size: int, at: int, patch: bytes) -> BinaryIO:
    """An :class:`Overlay` typed as the binary stream it stands in for."""
    return cast(BinaryIO, Overlay(inner, size, at, patch))


def zero_tail(inner: BinaryIO, valid: int, size: int) -> BinaryIO:
    """A :class:`ZeroTail` typed as the binary stream it stands in for."""
    return cast(BinaryIO, ZeroTail(inner, valid, size))
