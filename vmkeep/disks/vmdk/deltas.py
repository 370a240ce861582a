"""Read a snapshot delta chain as one point-in-time disk (``VMFSSPARSE`` and ``SESPARSE``).

When a VM already has a snapshot of its own, the disk backing of *our* snapshot is the
administrator's frozen delta, e.g. ``small04-000001.vmdk``::

    createType="vmfsSparse"
    parentCID=1a2b3c4d
    parentFileNameHint="small04.vmdk"
    RW 16384 VMFSSPARSE "small04-000001-delta.vmdk"

whose parent is the base ``small04.vmdk`` (+ ``small04-flat.vmdk``), possibly through several
deltas.  :func:`open_chain` walks the chain from the top and returns a :class:`DeltaChain`: a
``pread`` source giving, for every grain, the data of the newest layer that has it allocated,
else its parent's, down to the flat base (zeros below a bottom delta without a parent).

Formats (headers and grain directories are parsed by :mod:`dissect.hypervisor`, grain tables
by :mod:`vmkeep.disks.vmdk.grains`):

* ``VMFSSPARSE`` — ESX "COWD" redo logs (VMFS5 and older): 2048-byte header, a grain directory
  of 32-bit sector numbers of grain tables with 4096 32-bit entries, 0 = not in this layer,
  any grain size up to 1 MiB (ESXi writes 512-byte grains);
* ``SESPARSE`` — ESX space-efficient sparse (every snapshot delta on VMFS6): const header,
  volatile header, grain directory and grain tables of 64-bit entries typed unallocated (falls
  through to the parent) / unmapped (trimmed by the guest: zeros, never the parent's data, as
  qemu reads it) / zero / allocated.  Checked as strictly as qemu does (version, 4 KiB grains,
  4096-entry tables, no flags, clean journal).

Safety — every file of the chain is untrusted:

* parent hints and extent names must be bare names (no ``/``, ``\\``, ``..``, not absolute, no
  NUL, no ``[datastore]``) and are resolved in the directory of the disk we were given only;
* at most :data:`MAX_DEPTH` delta layers, no file twice (cycles), each child's ``parentCID``
  must be its parent's ``CID`` (as ESX itself checks), every layer's capacity (descriptor and
  sparse header) must equal the disk's;
* headers are bounded before use, every grain table referenced by a directory must lie inside
  the file, and every grain we read must too; metadata reads past the end of a file are refused
  rather than zero-filled.  Anything else the parser raises becomes
  :class:`~vmkeep.disks.errors.UnsafeDescriptorError`.

Errors: :class:`~vmkeep.disks.errors.UnsafeDescriptorError` (exit 14) for a hostile or
inconsistent chain, :class:`~vmkeep.disks.errors.UnsupportedDiskFormat` for a valid format we do
not read (hosted ``SPARSE`` extents, multi-extent deltas, an SESparse journal needing replay;
the vSphere transports report it as their ``UnsupportedDisk``).  Errors of the file openers and
sources (e.g. the transports' ``DatastoreIOError``, ``NotFound``) pass through unchanged.

The chain is read over abstract file openers (:data:`FileOpener`, :data:`FlatOpener`) and
:class:`~vmkeep.storage.disk_source.ByteSource` s; :mod:`vmkeep.vsphere.transports` supplies
datastore files over HTTPS or a datastore mount.

Performance and threads: headers and grain directories are parsed by dissect; each grain table
is read in one request, decoded without a per-grain Python loop into runs of grains
(:mod:`vmkeep.disks.vmdk.grains`) and cached per layer (LRU of :data:`TABLE_CACHE` tables); a read
resolves its whole range layer by layer, one step per run, coalesces physically contiguous
grains (and small holes, see :func:`_merge`) into one range request per run, and sends
unallocated ranges to the parent in one go.
:meth:`DeltaChain.pread` is thread-safe: table
look-ups hold a per-layer lock, data reads go through the sources' own thread-safe ``pread``.
"""

from __future__ import annotations

import io
import math
import posixpath
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

from dissect.hypervisor.disk.c_vmdk import COWD_MAGIC, SECTOR_SIZE, c_vmdk
from dissect.hypervisor.disk.vmdk import SparseDisk

from vmkeep.disks.errors import UnsafeDescriptorError, UnsupportedDiskFormat
from vmkeep.disks.vmdk.descriptor import (
    MAX_DESCRIPTOR,
    NO_PARENT,
    Descriptor,
    check_extent_name,
    looks_like_descriptor,
    parse_descriptor,
)
from vmkeep.disks.vmdk.grains import (
    CorruptTable,
    GrainRuns,
    cowd_wheres,
    sesparse_wheres,
)
from vmkeep.errors import VmkeepError
from vmkeep.lru import LRU
from vmkeep.storage.disk_source import ByteSource

MAX_DEPTH = 32
MERGE_GAP = 64 * 1024  # read through holes this small instead of issuing another request
TABLE_CACHE = 1024  # decoded grain tables kept per layer (8 KiB–32 KiB each)
HEAD = 64 * 1024  # bytes of each sparse file fetched at open (headers and small directories)
SPARSE_KINDS = frozenset({"VMFSSPARSE", "SESPARSE"})
COWD_GT_ENTRIES = 4096
COWD_MAX_GRAIN_SECTORS = 2048  # 1 MiB grains; ESXi writes 1 (512 bytes)
SESPARSE_MAGIC = 0xCAFEBABE
SESPARSE_VOLATILE_MAGIC = 0xCAFECAFE
SESPARSE_VERSION = 0x0000000200000001
SESPARSE_GT_PRESENT = 0x1000000000000000
SESPARSE_PAD = 26 * 8  # const header: 304 bytes of zero padding from here (qemu checks)


_ABSENT = object()  # an LRU miss (a cached ``None`` is an absent grain table)

FileOpener = Callable[[str], tuple[ByteSource, int]]
"""Datastore-relative path → (source, file size in bytes); raises ``NotFound`` if absent."""

FlatOpener = Callable[[Descriptor], ByteSource]
"""A flat base descriptor (of the chain's directory) → a reader of its logical disk."""


def _close(source: object) -> None:
    closer = getattr(source, "close", None)
    if closer is not None:
        closer()


class _File:
    """Read-only file-like over a :class:`ByteSource` for dissect (``read``/``seek``/``tell``).

    The first :data:`HEAD` bytes are fetched once; a read reaching past the end of the file
    raises :class:`~vmkeep.disks.errors.UnsafeDescriptorError` (metadata pointing outside the
    file), never zero-fills.
    Not thread-safe: the owning :class:`_Layer` serialises its use.
    """

    def __init__(self, source: ByteSource, size: int, name: str) -> None:
        self.source, self.size, self.name = source, size, name
        self.pos = 0
        self.head = source.pread(0, min(size, HEAD)) if size else b""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise UnsafeDescriptorError(self.name, "negative offset in sparse metadata")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size - self.pos)
        if self.pos + n > self.size:
            raise UnsafeDescriptorError(
                self.name, f"metadata at byte {self.pos}+{n} lies past the end of the file "
                f"({self.size} bytes)"
            )
        if self.pos + n <= len(self.head):
            data = self.head[self.pos : self.pos + n]
        else:
            data = self.source.pread(self.pos, n)
        self.pos += n
        return data


class _Layer:
    """One sparse delta extent: validated header and directory, grain look-ups under a lock."""

    def __init__(self, name: str, kind: str, source: ByteSource, size: int, capacity: int) -> None:
        self.name, self.kind, self.source, self.size = name, kind, source, size
        self.lock = threading.Lock()
        self.sectors = capacity // SECTOR_SIZE
        fh = _File(source, size, name)
        self.head = fh.head
        if kind == "VMFSSPARSE":
            self._check_cowd(fh.head)
        else:
            self._check_sesparse(fh)
        fh.seek(0)
        try:
            self.disk: Any = SparseDisk(fh)
        except VmkeepError:  # a typed error of ours or of the source: as it is
            raise
        except Exception as exc:
            msg = f"corrupt sparse header: {type(exc).__name__}"
            raise UnsafeDescriptorError(name, msg) from None
        self.grain = int(self.disk.header.grain_size)
        self.per_table = int(self.disk._grain_table_size)
        self.table_at: dict[int, int] = {}  # grain table index → byte offset in the file
        self.tables = self._check_directory()
        self._cache: LRU[int, GrainRuns | None] = LRU(TABLE_CACHE)

    # -- validation -----------------------------------------------------------------------------
    def _check_cowd(self, head: bytes) -> None:
        if head[:4] != COWD_MAGIC or len(head) < len(c_vmdk.COWDSparseExtentHeader):
            raise UnsafeDescriptorError(self.name, "VMFSSPARSE extent without a COWD header")
        h = c_vmdk.COWDSparseExtentHeader(head)
        self._same_capacity(int(h.capacity))
        gs, n_gd, gd = int(h.grain_size), int(h.num_grain_directory_entries), int(
            h.primary_grain_directory_offset
        )
        if not 1 <= gs <= COWD_MAX_GRAIN_SECTORS:
            raise UnsafeDescriptorError(self.name, f"COWD grain size {gs} sectors")
        if n_gd != math.ceil(self.sectors / (COWD_GT_ENTRIES * gs)):
            raise UnsafeDescriptorError(self.name, f"COWD grain directory of {n_gd} entries")
        if gd < 4 or gd * SECTOR_SIZE + 4 * n_gd > self.size:
            raise UnsafeDescriptorError(self.name, f"COWD grain directory at sector {gd} is "
                                        "outside the file")
        self.meta_end = gd * SECTOR_SIZE + 4 * n_gd

    def _check_sesparse(self, fh: _File) -> None:
        head = fh.head
        if len(head) < SECTOR_SIZE or int.from_bytes(head[:8], "little") != SESPARSE_MAGIC:
            raise UnsafeDescriptorError(self.name, "SESPARSE extent without an SESparse header")
        h = c_vmdk.VMDKSESparseConstHeader(head)
        if (int(h.version), int(h.grain_size), int(h.grain_table_size), int(h.flags)) != (
            SESPARSE_VERSION, 8, 64, 0
        ):
            raise UnsupportedDiskFormat(
                self.name, f"SESparse version {int(h.version):#x}, grain {int(h.grain_size)}, "
                f"table {int(h.grain_table_size)} sectors, flags {int(h.flags):#x}"
            )
        reserved = (h.reserved1, h.reserved2, h.reserved3, h.reserved4)
        if any(int(r) for r in reserved) or any(head[SESPARSE_PAD:SECTOR_SIZE]):
            raise UnsafeDescriptorError(self.name, "SESparse header with non-zero reserved fields")
        self._same_capacity(int(h.capacity))
        regions = {
            "volatile header": (int(h.volatile_header_offset), 1),
            "grain directory": (int(h.grain_directory_offset), int(h.grain_directory_size)),
        }
        for what, (off, n) in regions.items():
            if off < 1 or n < 1 or (off + n) * SECTOR_SIZE > self.size:
                raise UnsafeDescriptorError(self.name, f"SESparse {what} outside the file")
        if int(h.grains_offset) < 1 or int(h.grain_tables_offset) < 1:
            raise UnsafeDescriptorError(self.name, "SESparse grain or table area at sector 0")
        coverage = int(h.grain_directory_size) * SECTOR_SIZE // 8 * 4096 * 8
        if coverage < self.sectors:
            raise UnsafeDescriptorError(
                self.name, "SESparse grain directory does not cover the disk"
            )
        fh.seek(int(h.volatile_header_offset) * SECTOR_SIZE)
        vol = c_vmdk.VMDKSESparseVolatileHeader(fh.read(SECTOR_SIZE))
        if int(vol.magic) != SESPARSE_VOLATILE_MAGIC:
            raise UnsafeDescriptorError(self.name, "bad SESparse volatile header")
        if int(vol.replay_journal):
            raise UnsupportedDiskFormat(
                self.name, "SESparse journal needs replaying (unclean delta)"
            )
        self.meta_end = int(h.grain_directory_offset) * SECTOR_SIZE

    def _same_capacity(self, sectors: int) -> None:
        if sectors != self.sectors:
            raise UnsafeDescriptorError(
                self.name, f"sparse header says {sectors * SECTOR_SIZE} bytes, the disk is "
                f"{self.sectors * SECTOR_SIZE}"
            )

    def _check_directory(self) -> list[int]:
        """Indices of the grain tables present; every one must lie inside the file."""
        disk, present = self.disk, []
        table_bytes = self.per_table * (8 if disk.is_sesparse else 4)
        for index, entry in enumerate(disk._grain_directory):
            entry = int(entry)
            if not entry:
                continue
            if disk.is_sesparse:
                if entry & 0xFFFFFFFF00000000 != SESPARSE_GT_PRESENT:
                    raise UnsafeDescriptorError(self.name, f"bad SESparse directory entry {index}")
                start = disk.header.grain_tables_offset * SECTOR_SIZE + (
                    entry & 0xFFFFFFFF
                ) * table_bytes
            else:
                start = entry * SECTOR_SIZE
                if start < self.meta_end:
                    msg = f"grain table {index} overlaps the header"
                    raise UnsafeDescriptorError(self.name, msg)
            if start + table_bytes > self.size:
                raise UnsafeDescriptorError(
                    self.name, f"grain table {index} at byte {start} is past the end of the file"
                )
            present.append(index)
            self.table_at[index] = start
        return present

    # -- reading --------------------------------------------------------------------------------
    def _table(self, index: int) -> GrainRuns | None:
        """Grain table ``index`` as runs (:class:`~vmkeep.disks.vmdk.grains.GrainRuns`), ``None``
        when absent.  Read with one request, decoded without a per-grain loop, cached (LRU of
        :data:`TABLE_CACHE` tables); call with the lock held."""
        cached = self._cache.get(index, _ABSENT)
        if cached is not _ABSENT:
            return cast("GrainRuns | None", cached)
        table: GrainRuns | None = None
        start = self.table_at.get(index)
        if start is not None:
            ses = self.disk.is_sesparse
            n = self.per_table * (8 if ses else 4)
            raw = (
                self.head[start : start + n]
                if start + n <= len(self.head)
                else self.source.pread(start, n)
            )
            try:
                wheres = (
                    sesparse_wheres(raw, int(self.disk.header.grains_offset), self.grain)
                    if ses else cowd_wheres(raw)
                )
            except CorruptTable as exc:
                msg = f"corrupt grain table {index}: {exc}"
                raise UnsafeDescriptorError(self.name, msg) from None
            table = GrainRuns.from_wheres(wheres, self.grain)
        self._cache.put(index, table)
        return table

    def runs(self, sector: int, count: int) -> list[tuple[int, int, int]]:
        """``(logical sector, sectors, where)`` covering the range in order, adjacent grains of
        the same kind (and physically contiguous data) merged; ``where`` is the file sector of
        the data, ``0`` for "ask the parent", ``-1`` for zeros.  One step per run of grains
        (see :mod:`vmkeep.disks.vmdk.grains`), never per grain."""
        gs, per = self.grain, self.per_table
        out: list[tuple[int, int, int]] = []
        at, end = sector, sector + count

        def add(at: int, n: int, where: int) -> None:
            if out:
                ps, pn, pw = out[-1]
                if (pw == where and where <= 0) or (pw > 0 and where == pw + pn):
                    out[-1] = (ps, pn + n, pw)
                    return
            out.append((at, n, where))

        with self.lock:
            while at < end:
                grain, within = divmod(at, gs)
                index, i = divmod(grain, per)
                stop = min(end, (index + 1) * per * gs)
                table = self._table(index)
                if table is None:
                    add(at, stop - at, 0)
                    at = stop
                    continue
                for n, where in table.spans(i, within, stop - at):
                    add(at, n, where)
                    at += n
                at = stop
        for at, n, where in out:
            if where > 0 and (where * SECTOR_SIZE < self.meta_end
                              or (where + n) * SECTOR_SIZE > self.size):
                raise UnsafeDescriptorError(
                    self.name, f"grain of sector {at} at file sector {where} is outside the "
                    "data area"
                )
        return out

    def allocated(self) -> list[tuple[int, int]]:
        """Logical byte extents whose grains this layer holds (data, zeros or unmapped: all
        differ from the parent), merged, sorted."""
        gb = self.grain * SECTOR_SIZE
        limit = self.sectors * SECTOR_SIZE
        out: list[tuple[int, int]] = []
        for t in self.tables:
            with self.lock:
                table = self._table(t)
            for first, count in table.held() if table is not None else ():
                off = (t * self.per_table + first) * gb
                if off >= limit:
                    break
                n = min(count * gb, limit - off)
                if out and out[-1][0] + out[-1][1] == off:
                    out[-1] = (out[-1][0], out[-1][1] + n)
                else:
                    out.append((off, n))
        return out


_Read = tuple[int, int, int]  # (file offset, length, offset in the result buffer)


def _merge(reads: list[_Read]) -> Iterator[tuple[int, int, list[_Read]]]:
    """Group ``(file offset, length, dest)`` reads into ``(offset, length, members)`` requests,
    joining reads that touch, or whose hole is at most :data:`MERGE_GAP` bytes and no larger
    than the bytes wanted so far (so at most about half of a request is thrown away)."""
    reads.sort()
    group: list[tuple[int, int, int]] = []
    start = end = useful = 0
    for off, n, dest in reads:
        if group and off - end <= min(MERGE_GAP, useful):
            group.append((off, n, dest))
            end = max(end, off + n)
            useful += n
            continue
        if group:
            yield start, end - start, group
        group, start, end, useful = [(off, n, dest)], off, off + n, n
    if group:
        yield start, end - start, group


class DeltaChain:
    """The composed disk of a delta chain (see module docstring); a thread-safe ByteSource.

    ``layers`` are the deltas newest first; ``base`` the flat parent (``None``: zeros).
    """

    def __init__(
        self, name: str, capacity: int, layers: list[_Layer], base: ByteSource | None,
        files: list[ByteSource],
    ) -> None:
        self.name, self.size = name, capacity
        self.layers, self.base = layers, base
        self._files = files  # everything opened, closed by close()

    @property
    def depth(self) -> int:
        """Number of delta layers above the base."""
        return len(self.layers)

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of the composed disk (clipped to its size)."""
        length = max(0, min(length, self.size - offset))
        if length <= 0 or offset < 0:
            return b""
        first = offset // SECTOR_SIZE
        last = -(-(offset + length) // SECTOR_SIZE)
        buf = bytearray((last - first) * SECTOR_SIZE)
        pending = [(first, last - first)]
        for layer in self.layers:
            reads: list[tuple[int, int, int]] = []
            below: list[tuple[int, int]] = []
            for sector, count in pending:
                for at, n, where in layer.runs(sector, count):
                    if where == 0:
                        if below and below[-1][0] + below[-1][1] == at:
                            below[-1] = (below[-1][0], below[-1][1] + n)
                        else:
                            below.append((at, n))
                    elif where > 0:
                        reads.append((where * SECTOR_SIZE, n * SECTOR_SIZE,
                                      (at - first) * SECTOR_SIZE))
            self._fetch(layer.source, reads, buf)
            pending = below
            if not pending:
                break
        if pending and self.base is not None:
            reads = [(s * SECTOR_SIZE, n * SECTOR_SIZE, (s - first) * SECTOR_SIZE)
                     for s, n in pending]
            self._fetch(self.base, reads, buf)
        skip = offset - first * SECTOR_SIZE
        return bytes(buf[skip : skip + length])

    @staticmethod
    def _fetch(source: ByteSource, reads: list[tuple[int, int, int]], buf: bytearray) -> None:
        for start, n, members in _merge(reads):
            data = source.pread(start, n)
            for off, size, dest in members:
                buf[dest : dest + size] = data[off - start : off - start + size]

    def allocated(self, depth: int | None = None) -> list[tuple[int, int]]:
        """Logical ``(offset, length)`` extents held by the newest ``depth`` delta layers (all
        when ``None``), merged and sorted: what changed since the oldest of those snapshots.
        Reads every present grain table of those layers (cached for the data reads after)."""
        marks: list[tuple[int, int]] = []
        for layer in self.layers[: len(self.layers) if depth is None else depth]:
            marks.extend(layer.allocated())
        marks.sort()
        out: list[tuple[int, int]] = []
        for off, n in marks:
            if out and off <= out[-1][0] + out[-1][1]:
                end = max(out[-1][0] + out[-1][1], off + n)
                out[-1] = (out[-1][0], end - out[-1][0])
            else:
                out.append((off, n))
        return out

    def close(self) -> None:
        for f in self._files:
            _close(f)
        self._files = []


def _read_descriptor(source: ByteSource, size: int, name: str) -> Descriptor:
    head = source.pread(0, min(size, MAX_DESCRIPTOR)) if size else b""
    if not looks_like_descriptor(head):
        raise UnsupportedDiskFormat(name, "parent is not a text descriptor (monolithic sparse?)")
    return parse_descriptor(head, name)


def open_chain(
    name: str,
    path: str,
    head: bytes,
    capacity: int,
    open_file: FileOpener,
    open_flat: FlatOpener,
    *,
    max_depth: int = MAX_DEPTH,
) -> DeltaChain:
    """Open the delta chain whose top descriptor (datastore-relative ``path``, already read as
    ``head``) has sparse extents; ``name`` is used in errors (``"[ds] dir/disk.vmdk"``).

    Every file is opened with ``open_file`` relative to the datastore, always in ``path``'s
    directory; the flat base through ``open_flat``.  On error every opened file is closed.
    """
    directory = posixpath.dirname(path)
    files: list[ByteSource] = []
    layers: list[_Layer] = []
    base: ByteSource | None = None
    seen = {posixpath.basename(path)}
    descriptor, label = parse_descriptor(head, name), name
    try:
        while True:
            if descriptor.capacity != capacity:
                raise UnsafeDescriptorError(
                    label, f"describes {descriptor.capacity} bytes, vSphere says {capacity}"
                )
            if descriptor.is_flat:
                base = open_flat(descriptor)
                files.append(base)
                break
            kinds = {e.kind for e in descriptor.extents}
            if len(descriptor.extents) != 1 or not kinds <= SPARSE_KINDS:
                raise UnsupportedDiskFormat(
                    label, f"{'/'.join(sorted(kinds))} extents (only single VMFSSPARSE or "
                    "SESPARSE extent deltas are read)"
                )
            if len(layers) >= max_depth:
                raise UnsafeDescriptorError(name, f"more than {max_depth} snapshot delta layers")
            extent = descriptor.extents[0]
            if extent.file is None or extent.offset_sectors:
                raise UnsafeDescriptorError(label, "sparse extent without a file or with an offset")
            src, size = open_file(posixpath.join(directory, extent.file))
            files.append(src)
            layers.append(_Layer(f"{label} ({extent.file})", extent.kind, src, size, capacity))
            parent_cid = descriptor.parent_cid
            hint = descriptor.parent_hint
            if hint is None:
                if parent_cid not in (None, NO_PARENT):
                    raise UnsafeDescriptorError(label, "parentCID without a parentFileNameHint")
                break  # a delta without a parent: unallocated grains read as zeros
            check_extent_name(label, hint)
            if hint in seen:
                raise UnsafeDescriptorError(name, f"delta chain loops back to {hint!r}")
            seen.add(hint)
            label = f"{name} → {hint}"
            src, size = open_file(posixpath.join(directory, hint))
            try:
                descriptor = _read_descriptor(src, size, label)
            finally:
                _close(src)
            parent_own = descriptor.cid
            if parent_cid is not None and parent_own is not None and parent_cid != parent_own:
                raise UnsafeDescriptorError(
                    label, f"parent CID {parent_own} is not the child's parentCID {parent_cid} "
                    "(parent modified since the snapshot)"
                )
    except BaseException:
        for f in files:
            _close(f)
        raise
    return DeltaChain(name, capacity, layers, base, files)
