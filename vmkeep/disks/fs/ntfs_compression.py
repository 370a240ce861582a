"""Files NTFS compressed itself (a folder marked "Compress contents to save disk space",
``compact /c``): their compression units read by NTFS's rule and decoded by libfwnt.

NTFS stores a compressed stream in compression units of 16 clusters (64 KiB with 4 KiB
clusters).  A unit's runs say how it is stored (as Windows and ntfs-3g read them): starting with a
sparse run — zeros; all 16 clusters present — stored as it is; clusters followed by a sparse
run — LZNT1-compressed into those clusters (read in unit order, a hole between them as zeros,
as ntfs-3g reads them), its decoded data completed with zeros.
dissect.ntfs's :class:`~dissect.ntfs.stream.CompressedRunlistStream` reads a unit's runs only
until it has as many bytes as the file has left, so a last unit whose compressed clusters are
exactly that size (a 4096-byte file compressed into one cluster) is taken for stored data and
reads as its compressed bytes; and it decodes with dissect.util's pure-Python LZNT1 (4.5 MiB/s on
executables), which returns nothing for a unit that does not decode — the file then reads
back 64 KiB short.  :class:`CompressedStream` reads every unit by the rule above and decodes
with libyal's libfwnt (``pyfwnt``, C: ~150 MiB/s; ``bench/bench_lznt1.py``,
docs/performance.md); :func:`install` makes dissect.ntfs open compressed streams with it.

Contract: a unit reads as exactly its 64 KiB (the file's end trims the last): a compressed unit
whose data ends early is completed with zeros, as NTFS does; a unit that does not decode, or
would decode to more than a unit, raises ``OSError`` — vmkeep's readers turn it into a typed
file-system error naming the file (a restore reports it as ``read-error``), never a short or
zero-filled read.  Decoding is bounded by the unit size whatever the clusters hold.
"""

from __future__ import annotations

import pyfwnt
from dissect.ntfs.stream import CompressedRunlistStream

#: the largest compression unit NTFS writes: 16 clusters of at most 4 KiB (Windows compresses
#: nothing on volumes with larger clusters)
MAX_UNIT = 16 * 4096


def decompress(data: bytes, unit: int = MAX_UNIT) -> bytes:
    """One LZNT1-compressed unit: at most ``unit`` bytes; ``OSError`` when it does not decode."""
    if unit > MAX_UNIT:
        raise OSError(f"compression unit of {unit} bytes: larger than NTFS writes")
    return bytes(pyfwnt.lznt1_decompress(data, unit))


class CompressedStream(CompressedRunlistStream):
    """A compressed NTFS stream, read unit by unit (see the module docstring)."""

    def _unit(self, index: int) -> bytes:
        unit = self.compression_unit_size
        if index >= len(self._cu_blocks):  # past the runs: the stream's allocated end
            return bytes(unit)
        runs = self._cu_blocks[index]
        if not runs or runs[0][0] is None:  # a unit that starts sparse is sparse (as ntfs-3g)
            return bytes(unit)
        last = max(i for i, (lcn, _count) in enumerate(runs) if lcn is not None)
        parts = []
        for lcn, count in runs[: last + 1]:  # in unit order, a hole between clusters as zeros
            if lcn is None:
                parts.append(bytes(count * self.cluster_size))
            else:
                self._fh.seek(lcn * self.cluster_size)
                parts.append(self._fh.read(count * self.cluster_size))
        data = b"".join(parts)
        if all(lcn is not None for lcn, _count in runs):
            return data  # every cluster present: stored as it is
        try:
            decoded = decompress(data, unit)
        except OSError as exc:
            raise OSError(f"compression unit {index} does not decode: {exc}") from None
        return decoded + bytes(unit - len(decoded))

    def _read(self, offset: int, length: int) -> bytes:
        unit = self.compression_unit_size
        first = offset // unit
        count = -(-length // unit)
        return b"".join(self._unit(i) for i in range(first, first + count))


def install() -> None:
    """Make dissect.ntfs open compressed streams as :class:`CompressedStream` (idempotent)."""
    import dissect.ntfs.util

    dissect.ntfs.util.CompressedRunlistStream = CompressedStream
