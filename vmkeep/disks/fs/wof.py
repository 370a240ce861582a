"""Files Windows compressed through WOF's file provider (CompactOS, ``compact /exe``): their
unnamed data stream is sparse, of the file's size, and the content is in the named stream
``WofCompressedData``, chunk by chunk (part of :mod:`vmkeep.disks.fs.ntfs`).

Format (as Windows writes it; wimlib and ntfs-3g's system-compression plugin read it the same
way, it is a WIM resource's): the reparse point (tag ``IO_REPARSE_TAG_WOF``) holds
``WOF_EXTERNAL_INFO`` (version 1, provider 2 = file) then ``FILE_PROVIDER_EXTERNAL_INFO_V1``
(version 1, algorithm: 0 XPRESS4K, 1 LZX, 2 XPRESS8K, 3 XPRESS16K).  The stream starts with a
chunk table — for chunks 1 … n-1, the offset where each starts, counted from the table's end (4
bytes each, 8 when the file is larger than 4 GiB) — then the chunks, each compressed on its own
(decoded by wimlib where it is installed, :mod:`.wimlib`; else XPRESS by :mod:`.xpress`) or
stored as it is when compressing did not make it smaller.

Contract: :func:`wof_algorithm` says how a WOF reparse point's file is compressed (``None``: not
the file provider, e.g. WIMBoot's WIM provider); :func:`open_wof` returns a seekable stream of
the file's ``size`` bytes over its ``WofCompressedData`` stream, decoding only the chunks a read
touches (the last one kept), for the algorithms :func:`readable` names (XPRESS always; LZX where
wimlib is installed); a chunk table or chunk that does not decode raises
:class:`~vmkeep.disks.errors.FsDamagedError` (naming the volume and file) when read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from itertools import pairwise
from typing import BinaryIO

from dissect.util.stream import AlignedStream

from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs import wimlib, xpress

#: algorithm number → (name, chunk size)
ALGORITHMS = {0: ("XPRESS4K", 4096), 1: ("LZX", 32768), 2: ("XPRESS8K", 8192),
              3: ("XPRESS16K", 16384)}
LZX = 1
WOF_PROVIDER_FILE = 2


def readable(algorithm: int) -> bool:
    """Whether this module decodes files of WOF ``algorithm`` on this machine."""
    return algorithm in (0, 2, 3) or (algorithm == LZX and wimlib.available())


def _decoder(algorithm: int) -> Callable[[bytes, int], bytes]:
    """How ``algorithm``'s chunks are decoded here: by wimlib where it is installed (XPRESS in
    C, not Python: ≈ 50× faster), else XPRESS by :mod:`.xpress`."""
    if wimlib.available():
        codec = wimlib.LZX if algorithm == LZX else wimlib.XPRESS
        return lambda data, size: wimlib.decompress(codec, data, size)
    return xpress.decompress


def wof_algorithm(reparse_data: bytes) -> int | None:
    """The algorithm number of a WOF reparse point's data (after the 8-byte reparse header), or
    ``None`` when it is not a version-1 file-provider point."""
    if len(reparse_data) < 16:
        return None
    version, provider, file_version, algorithm = struct.unpack_from("<IIII", reparse_data)
    if (version, provider, file_version) != (1, WOF_PROVIDER_FILE, 1):
        return None
    return algorithm


def open_wof(compressed: BinaryIO, compressed_size: int, size: int, algorithm: int,
             where: tuple[str, str]) -> BinaryIO:
    """The file's ``size`` bytes over its ``WofCompressedData`` stream ``compressed`` (module
    docstring); ``algorithm`` one :func:`readable` accepts; ``where``: the volume and the
    file's path, for errors."""
    return _WofStream(compressed, compressed_size, size, ALGORITHMS[algorithm][1],
                      _decoder(algorithm), where)


class _WofStream(AlignedStream):
    def __init__(self, fh: BinaryIO, compressed_size: int, size: int, chunk: int,
                 decode: Callable[[bytes, int], bytes], where: tuple[str, str]) -> None:
        self.fh, self.compressed_size, self.chunk, self.where = fh, compressed_size, chunk, where
        self.decode = decode
        self.chunks = (size + chunk - 1) // chunk
        self.entry = 8 if size > 0xFFFFFFFF else 4
        self.table_end = self.entry * max(0, self.chunks - 1)
        self._starts: list[int] | None = None
        super().__init__(size, chunk)

    def _chunk_starts(self) -> list[int]:
        """Where each chunk starts and the last ends, in the stream (read once, checked)."""
        if self._starts is None:
            if self.table_end > self.compressed_size:
                raise self._damaged(f"its chunk table ({self.table_end} bytes) is larger than "
                                    f"its stream ({self.compressed_size} bytes)")
            self.fh.seek(0)
            raw = self.fh.read(self.table_end)
            fmt = "<Q" if self.entry == 8 else "<I"
            offsets = [0, *(struct.unpack_from(fmt, raw, i * self.entry)[0]
                            for i in range(self.chunks - 1))]
            starts = [self.table_end + o for o in offsets] + [self.compressed_size]
            for i, (a, b) in enumerate(pairwise(starts)):
                if not a < b or b - a > self.chunk:
                    raise self._damaged(f"chunk {i} of its chunk table spans bytes {a}–{b}")
            self._starts = starts
        return self._starts

    def _read(self, offset: int, length: int) -> bytes:
        starts = self._chunk_starts()
        out = []
        first = offset // self.chunk
        for i in range(first, min(self.chunks, first + -(-length // self.chunk))):
            want = min(self.chunk, self.size - i * self.chunk)
            self.fh.seek(starts[i])
            data = self.fh.read(starts[i + 1] - starts[i])
            if len(data) != starts[i + 1] - starts[i]:
                raise self._damaged(f"chunk {i} is cut short")
            if len(data) == want:  # stored as it is
                out.append(data)
                continue
            try:
                out.append(self.decode(data, want))
            except (xpress.XpressError, wimlib.WimlibError) as exc:
                raise self._damaged(f"chunk {i}: {exc}") from None
        return b"".join(out)

    def _damaged(self, why: str) -> FsDamagedError:
        volume, path = self.where
        return FsDamagedError(volume, f"{path}: its WOF-compressed data: {why}")
