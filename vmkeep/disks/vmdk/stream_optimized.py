"""streamOptimized VMDK: the format's constants and header, and a streaming reader.

This is the format of vSphere's NFC export and import leases (``ExportVm``, ``ExportSnapshot``,
``ImportVApp``) and of OVA disks.  One module owns it: the reader is here, a writer (restores
through NFC import) belongs beside it and shares the constants and :class:`SparseHeader`.

Format (VMware "Virtual Disk Format 5.0", *stream-optimized compressed sparse extent*; the same
as qemu's ``block/vmdk.c`` and govmomi's ``vmdk`` package read and write).  Little-endian; a
sector is 512 bytes; every structure below starts on a sector boundary::

    sector 0        SparseExtentHeader (HEADER, padded to 512 bytes): magic "KDMV", version
                    1..3, flags ⊇ COMPRESSED|MARKERS (0x30001 with the newline check bit),
                    capacity and grain size in sectors, descriptor offset/size in sectors,
                    numGTEsPerGT (512), gdOffset = GD_AT_END (the real one is in the footer),
                    overHead (sectors before the first grain), compressAlgorithm 1 (deflate)
    sector 1…       the embedded text descriptor (createType="streamOptimized"), zero padded
    overHead…       a sequence of, in stream order:
      grain         {lba u64 (sectors), size u32 (compressed bytes, > 0)} then ``size`` bytes of
                    zlib (RFC 1950) data inflating to one grain; padded to a sector.  Grains
                    not in the stream read as zeros.
      metadata      a whole sector {val u64, 0 u32, type u32, zero padding} followed by ``val``
                    sectors of payload: type GT (a grain table: numGTEsPerGT u32 sector offsets
                    of grain markers), GD (the grain directory: u32 sector offsets of the GTs),
                    FOOTER (a copy of the header with the real gdOffset), EOS (val 0, no payload:
                    end of stream).

The reader needs neither the tables nor the footer: every grain carries its own LBA, so it
decodes grains as they arrive and yields ``(offset, data)`` — bounded memory (one grain plus the
read buffer), whatever the disk size.  It trusts nothing: every field is range-checked and every
violation raises :class:`StreamFormatError` (exit code 14) naming the stream offset; a grain must
inflate to exactly one grain (or the disk's tail), and inflating stops one byte past that
(no decompression bombs); grain LBAs must strictly increase (as ESX, ovftool and qemu write
them — the sequential consumers rely on it); the stream must end with the EOS marker.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from vmkeep.disks.errors import DiskFormatError

SECTOR = 512
MAGIC = b"KDMV"
#: flags
FLAG_VALID_NEWLINE = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
STREAM_FLAGS = FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS
#: header gdOffset meaning "the grain directory's offset is in the footer"
GD_AT_END = 0xFFFF_FFFF_FFFF_FFFF
COMPRESSION_DEFLATE = 1
#: metadata marker types
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
GTES_PER_GT = 512
DEFAULT_GRAIN_SECTORS = 128  # 64 KiB
#: "\n", " ", "\r", "\n": the newline-corruption check bytes of the header
NEWLINE_CHECK = b"\n \r\n"

#: magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize, numGTEsPerGT,
#: rgdOffset, gdOffset, overHead, uncleanShutdown, newline check (4 bytes), compressAlgorithm
HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
#: a grain marker: lba, compressed size (the data follows)
GRAIN_MARKER = struct.Struct("<QI")
#: a metadata marker's first 16 bytes: val, size (0), type
META_MARKER = struct.Struct("<QII")

#: limits for untrusted input
MAX_CAPACITY = 1 << 46  # 64 TiB, vSphere's largest virtual disk is 62 TiB
MAX_DESCRIPTOR_SECTORS = 128  # 64 KiB
MAX_OVERHEAD_SECTORS = 1 << 20
MAX_GRAIN_SECTORS = 2048  # 1 MiB
MAX_META_SECTORS = 1 << 16  # a GD of 32 TiB / 32 MiB × 4 bytes is 4 MiB = 8192 sectors


class StreamFormatError(DiskFormatError):
    """Cannot read streamOptimized VMDK {}: {}"""


@dataclass(frozen=True)
class SparseHeader:
    """The sparse extent header (sector 0, and again in the footer)."""

    version: int = 3
    flags: int = STREAM_FLAGS
    capacity_sectors: int = 0
    grain_sectors: int = DEFAULT_GRAIN_SECTORS
    descriptor_offset: int = 1
    descriptor_sectors: int = 1
    gtes_per_gt: int = GTES_PER_GT
    rgd_offset: int = 0
    gd_offset: int = GD_AT_END
    overhead_sectors: int = 128
    unclean_shutdown: int = 0
    compress_algorithm: int = COMPRESSION_DEFLATE

    @property
    def capacity(self) -> int:
        return self.capacity_sectors * SECTOR

    @property
    def grain_size(self) -> int:
        return self.grain_sectors * SECTOR

    def pack(self) -> bytes:
        """The header as one 512-byte sector."""
        return HEADER.pack(
            MAGIC, self.version, self.flags, self.capacity_sectors, self.grain_sectors,
            self.descriptor_offset, self.descriptor_sectors, self.gtes_per_gt, self.rgd_offset,
            self.gd_offset, self.overhead_sectors, self.unclean_shutdown, NEWLINE_CHECK,
            self.compress_algorithm,
        ).ljust(SECTOR, b"\0")

    @classmethod
    def unpack(cls, data: bytes, name: str = "stream") -> SparseHeader:
        """Parse and check a header sector of a *stream-optimized* extent."""
        if len(data) < HEADER.size:
            raise StreamFormatError(name, "header is truncated")
        (magic, version, flags, capacity, grain, d_off, d_size, gtes, rgd, gd, overhead,
         unclean, _check, algo) = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise StreamFormatError(name, f"bad magic {magic!r} (not a sparse VMDK)")
        if not 1 <= version <= 3:
            raise StreamFormatError(name, f"unsupported version {version}")
        if flags & (FLAG_COMPRESSED | FLAG_MARKERS) != FLAG_COMPRESSED | FLAG_MARKERS:
            raise StreamFormatError(name, f"flags {flags:#x}: not stream-optimized "
                                    "(compressed grains with markers)")
        if algo != COMPRESSION_DEFLATE:
            raise StreamFormatError(name, f"unknown compression algorithm {algo}")
        if grain < 8 or grain > MAX_GRAIN_SECTORS or grain & (grain - 1):
            raise StreamFormatError(name, f"grain of {grain} sectors")
        if capacity * SECTOR > MAX_CAPACITY:
            raise StreamFormatError(name, f"capacity of {capacity} sectors is too large")
        if not 0 < gtes <= 4096:
            raise StreamFormatError(name, f"{gtes} entries per grain table")
        if d_size > MAX_DESCRIPTOR_SECTORS or (d_size and d_off < 1):
            raise StreamFormatError(name, f"descriptor at sector {d_off}, {d_size} sectors")
        if not d_off + d_size <= overhead <= MAX_OVERHEAD_SECTORS or overhead < 1:
            raise StreamFormatError(name, f"grains start at sector {overhead}")
        return cls(version, flags, capacity, grain, d_off, d_size, gtes, rgd, gd, overhead,
                   unclean, algo)


def pack_meta_marker(val: int, marker_type: int) -> bytes:
    """A metadata marker sector (GT, GD, FOOTER, EOS)."""
    return META_MARKER.pack(val, 0, marker_type).ljust(SECTOR, b"\0")


class ByteStream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Input:
    """Exact reads from a byte stream, counting the position."""

    def __init__(self, stream: ByteStream, name: str) -> None:
        self.stream, self.name, self.pos = stream, name, 0

    def read(self, n: int, what: str) -> bytes:
        parts, left = [], n
        while left > 0:
            chunk = self.stream.read(min(left, 1 << 20))
            if not chunk:
                raise StreamFormatError(
                    self.name, f"stream ends at byte {self.pos + n - left} inside {what}"
                )
            parts.append(chunk)
            left -= len(chunk)
        self.pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip(self, n: int, what: str) -> None:
        while n > 0:
            step = min(n, 1 << 20)
            self.read(step, what)
            n -= step

    def align(self, what: str) -> None:
        if self.pos % SECTOR:
            self.skip(SECTOR - self.pos % SECTOR, what)


class StreamReader:
    """Decode a streamOptimized VMDK from a sequential byte stream (see the module docstring).

    ``header`` and ``descriptor`` are read by the constructor; :meth:`grains` yields every grain
    in stream order as ``(offset, data)`` — ``data`` is one grain, or less for the disk's tail.
    ``position`` is the number of stream bytes consumed so far (for progress reports).
    """

    def __init__(self, stream: ByteStream, name: str = "stream") -> None:
        self.name = name
        self._in = _Input(stream, name)
        self.header = SparseHeader.unpack(self._in.read(SECTOR, "the header"), name)
        h = self.header
        self._in.skip((h.descriptor_offset - 1) * SECTOR, "the header area")
        raw = self._in.read(h.descriptor_sectors * SECTOR, "the descriptor")
        self.descriptor = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        self._in.skip((h.overhead_sectors - h.descriptor_offset - h.descriptor_sectors) * SECTOR,
                      "the metadata area")
        self.capacity = h.capacity
        self.finished = False

    @property
    def position(self) -> int:
        return self._in.pos

    def grains(self, *, decode: Callable[[int, int], bool] | None = None
               ) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, data)`` per grain until the end-of-stream marker.

        ``decode(offset, length)``: when given and false for a grain, the grain is checked for
        placement but not inflated, and not yielded (a consumer that does not need it saves the
        work; the stream is still read to its end).
        """
        h, src = self.header, self._in
        grain = h.grain_size
        max_compressed = grain + grain // 8 + 1024  # deflate's worst case is ~0.03 % larger
        last_lba = -1
        while True:
            at = src.pos
            lba, size = GRAIN_MARKER.unpack(src.read(GRAIN_MARKER.size, "a marker"))
            if size == 0:
                (marker_type,) = struct.unpack("<I", src.read(4, "a marker"))
                src.skip(SECTOR - META_MARKER.size, "a marker")
                if marker_type == MARKER_EOS:
                    if lba != 0:
                        raise StreamFormatError(self.name, f"end-of-stream marker at byte {at} "
                                                f"has value {lba}")
                    self.finished = True
                    return
                if marker_type not in (MARKER_GT, MARKER_GD, MARKER_FOOTER):
                    raise StreamFormatError(self.name, f"unknown marker type {marker_type} at "
                                            f"byte {at}")
                if lba > MAX_META_SECTORS:
                    raise StreamFormatError(self.name, f"marker at byte {at} announces {lba} "
                                            "sectors of metadata")
                src.skip(lba * SECTOR, "metadata")
                continue
            offset = lba * SECTOR
            if lba % h.grain_sectors or offset >= h.capacity:
                raise StreamFormatError(self.name, f"grain marker at byte {at}: sector {lba} is "
                                        "not a grain of the disk")
            if lba <= last_lba:
                raise StreamFormatError(self.name, f"grain marker at byte {at}: sector {lba} "
                                        f"after sector {last_lba} (out of order)")
            if size > max_compressed:
                raise StreamFormatError(self.name, f"grain marker at byte {at}: {size} "
                                        f"compressed bytes for a {grain}-byte grain")
            last_lba = lba
            payload = src.read(size, "a grain")
            src.align("grain padding")
            want = min(grain, h.capacity - offset)
            if decode is not None and not decode(offset, want):
                continue
            yield offset, self._inflate(payload, want, grain, at)

    def _inflate(self, payload: bytes, want: int, grain: int, at: int) -> bytes:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(payload, grain + 1)
        except zlib.error as exc:
            raise StreamFormatError(self.name, f"grain at byte {at}: {exc}") from None
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise StreamFormatError(self.name, f"grain at byte {at} is not one complete zlib "
                                    "stream of at most one grain")
        if len(data) == grain and want < grain:
            data = data[:want]  # the disk's tail grain, zero padded
        if len(data) != want:
            raise StreamFormatError(self.name, f"grain at byte {at} inflates to {len(data)} "
                                    f"bytes, expected {want}")
        return data
