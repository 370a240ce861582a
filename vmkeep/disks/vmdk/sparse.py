"""Hosted sparse VMDK extents (``KDMV``: monolithicSparse, streamOptimized, twoGbMaxExtentSparse).

Contract:

- :class:`SparseExtent` wraps :class:`dissect.hypervisor.disk.vmdk.SparseDisk` for one sparse
  extent file-like and exposes it as an :class:`~vmkeep.disks.image.Extent`.
- Parents are never opened: an embedded descriptor naming a parent (``parentCID`` other than
  ``ffffffff`` or a ``parentFileNameHint``) raises :class:`ParentDiskRefused`.
- Header fields are bounded before use (grain size, table sizes, capacity, directory inside the
  file) and compressed grains are inflated to at most one grain, so a hostile file cannot make us
  allocate without limit.  Anything unparsable raises :class:`DiskFormatError`.
- :meth:`SparseExtent.allocated` walks the grain tables: grains pointing at data are allocated;
  absent and zero grains are not.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from dissect.hypervisor.disk.c_vmdk import SECTOR_SIZE, VMDK_MAGIC, c_vmdk
from dissect.hypervisor.disk.vmdk import SparseDisk

from vmkeep.disks.errors import DiskFormatError, ParentDiskRefused
from vmkeep.disks.image import Extent, stream_size
from vmkeep.disks.vmdk.descriptor import parent_of

MAX_GRAIN_SECTORS = 1 << 16  # 32 MiB grains; VMware uses 128 sectors
MAX_GT_ENTRIES = 1 << 16  # VMware uses 512
MAX_CAPACITY_SECTORS = 1 << 41  # 1 PiB


class _BoundedSparseDisk(SparseDisk):
    """dissect's SparseDisk with inflation bounded to one grain."""

    def _read_compressed_grain(self, sector: int) -> bytes:
        grain_bytes = self.header.grain_size * SECTOR_SIZE
        self.fh.seek(sector * SECTOR_SIZE)
        buf = self.fh.read(SECTOR_SIZE)
        if self.header.flags & c_vmdk.SPARSEFLAG_EMBEDDED_LBA:
            header_len, clen = 12, c_vmdk.SparseGrainLBAHeaderOnDisk(buf).cmp_size
        else:
            header_len, clen = 4, c_vmdk.uint32(buf)
        if clen > self.filesize or clen > 2 * grain_bytes + 4096:
            raise DiskFormatError(self.name, f"compressed grain at sector {sector} is {clen} bytes")
        if clen + header_len > len(buf):
            buf += self.fh.read(clen + header_len - len(buf))
        inflater = zlib.decompressobj()
        out = inflater.decompress(buf[header_len : header_len + clen], grain_bytes)
        return out.ljust(grain_bytes, b"\0")

    name = "sparse extent"


class SparseExtent(Extent):
    """One ``KDMV`` sparse extent file-like as an extent of a :class:`DiskImage`."""

    def __init__(self, fh: BinaryIO, name: str, *, owned: bool = False) -> None:
        self.fh, self.name, self.owned = fh, name, owned
        fh.seek(0)
        if fh.read(4) != VMDK_MAGIC:
            raise DiskFormatError(name, "not a hosted sparse extent (no KDMV magic)")
        fh.seek(0)
        try:
            disk = _BoundedSparseDisk(fh)
        except Exception as exc:
            raise DiskFormatError(name, f"corrupt sparse header: {exc!r}") from exc
        disk.name = name
        self.disk = disk
        self._validate(disk, stream_size(fh))
        if disk.descriptor is not None:
            parent = parent_of(disk.descriptor.attr)
            if parent is not None:
                raise ParentDiskRefused(name, parent)
        self.size = disk.size
        self.create_type: str = (
            disk.descriptor.attr.get("createType", "") if disk.descriptor is not None else ""
        )

    def _validate(self, disk: Any, filesize: int) -> None:
        hdr = disk.header
        gs, gte, cap = hdr.grain_size, hdr.num_grain_table_entries, hdr.capacity
        problems = []
        if not 1 <= gs <= MAX_GRAIN_SECTORS or gs & (gs - 1):
            problems.append(f"grain size {gs}")
        if not 1 <= gte <= MAX_GT_ENTRIES:
            problems.append(f"{gte} grain table entries")
        if cap > MAX_CAPACITY_SECTORS:
            problems.append(f"capacity {cap} sectors")
        if disk._grain_directory_size * 4 > max(filesize, 0):
            problems.append("grain directory larger than the file")
        if problems:
            raise DiskFormatError(self.name, "bad sparse header: " + ", ".join(problems))

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if length <= 0:
            return b""
        first = offset // SECTOR_SIZE
        last = (offset + length + SECTOR_SIZE - 1) // SECTOR_SIZE
        try:
            data = self.disk.read_sectors(first, last - first)
        except DiskFormatError:
            raise
        except Exception as exc:
            raise DiskFormatError(self.name, f"corrupt grain near byte {offset}: {exc!r}") from exc
        skip = offset - first * SECTOR_SIZE
        return bytes(data[skip : skip + length])

    def allocated(self) -> Iterator[tuple[int, int]]:
        disk = self.disk
        grain_bytes = disk.header.grain_size * SECTOR_SIZE
        per_table = disk._grain_table_size
        run_start, run_len = -1, 0
        for gd_index in range(disk._grain_directory_size):
            try:
                table = disk._lookup_grain_table(gd_index)
            except Exception as exc:
                msg = f"corrupt grain table {gd_index}: {exc!r}"
                raise DiskFormatError(self.name, msg) from exc
            if not table:
                continue
            for gt_index, entry in enumerate(table):
                if entry <= 1:  # 0: absent, 1: zero grain
                    continue
                off = (gd_index * per_table + gt_index) * grain_bytes
                if off >= self.size:
                    break
                if run_len and off == run_start + run_len:
                    run_len += grain_bytes
                else:
                    if run_len:
                        yield (run_start, run_len)
                    run_start, run_len = off, grain_bytes
        if run_len:
            yield (run_start, min(run_len, self.size - run_start))

    def close(self) -> None:
        if self.owned:
            self.fh.close()
