"""Content-defined chunking for file backups (FastCDC 2020 through pyfastcdc's compiled module).

Contract:

* Cut points depend only on the bytes from the start of the current chunk, so chunking a stream
  in pieces (:meth:`Chunker.cut_stream`) gives exactly the chunks of chunking it whole
  (:meth:`Chunker.cut`): an insertion shifts at most the chunks around it, and the same content
  gives the same blobs whichever file, image or offset it comes from.
* Parameters come from the repository's ``config.cdc`` (``min`` / ``avg`` / ``max`` bytes) and
  never change for a repository, or old files would stop deduplicating against new ones.
* pyfastcdc silently falls back to a pure-Python chunker about 100x slower when its Cython
  extension cannot be imported.  :func:`require_compiled` refuses that with
  :class:`ChunkerUnavailable` before a backup reads anything; nothing here ever runs the
  fallback.  The compiled chunker releases the GIL while cutting.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from vmkeep.storage.errors import StorageError

#: FastCDC normalisation level; fixed for the format (changing it moves every cut point).
NORMALIZATION = 1


class ChunkerUnavailable(StorageError):
    """The compiled content-defined chunker is not available ({}); refusing to run the pure-Python fallback, about 100x slower. Reinstall pyfastcdc with its binary wheel (pip install --force-reinstall pyfastcdc)."""  # noqa: E501

    exit_code = 1
    traceback = False


def _compiled_class() -> Any:
    try:
        from pyfastcdc.cy import FastCDC  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ChunkerUnavailable(f"pyfastcdc.cy: {exc}") from None
    return FastCDC


def require_compiled() -> None:
    """Raise :class:`ChunkerUnavailable` unless pyfastcdc's Cython module is importable."""
    cls = _compiled_class()
    module = getattr(cls, "__module__", "") or ""
    if not module.startswith("pyfastcdc.cy"):
        raise ChunkerUnavailable(f"FastCDC comes from {module or 'an unknown module'}")


class Chunker:
    """A FastCDC chunker with fixed parameters.  Not thread-safe: one per thread."""

    def __init__(self, min_size: int, avg_size: int, max_size: int) -> None:
        if not 64 <= min_size <= avg_size <= max_size:
            raise ValueError(f"bad CDC sizes: min {min_size}, avg {avg_size}, max {max_size}")
        self.min_size, self.avg_size, self.max_size = min_size, avg_size, max_size
        self._cdc = _compiled_class()(
            avg_size,
            min_size=min_size,
            max_size=max_size,
            normalized_chunking=NORMALIZATION,
        )

    def scratch(self, size: int) -> memoryview:
        """A writable buffer of ``size`` bytes owned by this chunker, reused by the next call
        (one per thread, like the chunker): for bytes that must be cut as one buffer without a
        fresh allocation (each fresh one is page-faulted and zeroed by the kernel again)."""
        buf: bytearray | None = getattr(self, "_scratch", None)
        if buf is None or len(buf) < size:
            buf = self._scratch = bytearray(max(size, 2 * self.max_size))
        return memoryview(buf)[:size]

    @classmethod
    def from_config(cls, cdc: Mapping[str, int]) -> Chunker:
        return cls(int(cdc["min"]), int(cdc["avg"]), int(cdc["max"]))

    def cut(self, buf: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Chunks of a whole buffer, as views into it (a buffer under ``min`` is one chunk)."""
        view = memoryview(buf)
        if len(view) <= self.min_size:
            if len(view):
                yield view
            return
        for chunk in self._cdc.cut_buf(view):
            yield view[chunk.offset : chunk.offset + chunk.length]

    def cut_stream(self, stream: BinaryIO) -> Iterator[bytes]:
        """Chunks of a stream, copied out (each chunk stays valid after the next one is cut)."""
        for chunk in self._cdc.cut_stream(stream):
            yield bytes(chunk.data)
