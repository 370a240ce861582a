"""The free blocks of an ext2/3/4 volume, from its block bitmaps — only when the volume vouches
for them (part of :mod:`vmkeep.disks.deleted_blocks`, which owns the contract for callers).

:func:`free_runs` returns volume ``(offset, length)`` runs of blocks whose bit is clear in their
group's block bitmap, whole bitmap bytes only (a run starts and ends on eight blocks), each at
least ``min_bytes`` long — or, as a string, why the bitmaps are not trusted.  Guest disks are
untrusted and a wrong run loses data, so the volume is searched only when all of this holds:

- **at rest or frozen**: the journal needs no recovery (``needs_recovery`` clear: Linux clears
  it when ``fsfreeze`` — VMware Tools' quiescing of a Linux guest — or an unmount flushes the
  journal; set, the bitmaps may lag what the journal will replay), no errors recorded
  (``s_state`` ``ERROR_FS``), and a volume without a journal cleanly unmounted (``VALID_FS``);
- **a layout read here**: no ``meta_bg`` (descriptors spread over the volume), not an external
  journal device, not ``bigalloc`` (clusters of blocks), a group's bitmap within one block;
- **checksums, where the volume keeps them**: with ``metadata_csum`` the superblock's, every
  group descriptor's and every block bitmap's CRC32C; with ``gdt_csum`` (``uninit_bg``) every
  descriptor's CRC16;
- **counts**: each group's clear bits equal its descriptor's free-block count;
- **metadata in use**: the superblock and descriptor table, every group's block bitmap, inode
  bitmap and inode table, and the journal's blocks are all marked in use.

Volumes whose bitmaps exceed :data:`BITMAP_LIMIT` (above 16 TiB of 4 KiB blocks) are read as
usual: the search holds every group's bitmap at once.  A group flagged ``BLOCK_UNINIT`` (never
allocated from since ``mkfs``; honoured only with descriptor checksums, as the kernel does) has
no bitmap on disk: it is read as usual — it holds nothing a file system ever deleted.  Blocks
before ``s_first_data_block`` (the boot block of 1 KiB-block volumes) are never free.  Raises
nothing of its own for bad guest data beyond what the caller catches (any exception means "read
as usual").
"""

from __future__ import annotations

import struct
from typing import Any

from vmkeep.disks.backup_superblock import primary_damaged
from vmkeep.disks.bitmaps import all_set, clear_count, clear_runs
from vmkeep.disks.fs.ext import MASK, RO_COMPAT_METADATA_CSUM, crc32c_raw, csum_seed
from vmkeep.disks.volumes import Volume

#: ``s_state``: cleanly unmounted / errors detected
VALID_FS, ERROR_FS = 0x0001, 0x0002
COMPAT_HAS_JOURNAL = 0x0004
INCOMPAT_RECOVER, INCOMPAT_JOURNAL_DEV, INCOMPAT_META_BG = 0x0004, 0x0008, 0x0010
INCOMPAT_64BIT = 0x0080
RO_COMPAT_GDT_CSUM, RO_COMPAT_BIGALLOC = 0x0010, 0x0200
#: ``bg_flags``: the group's block bitmap was never written (``mkfs -O uninit_bg``/flex_bg)
BG_BLOCK_UNINIT = 0x0002
#: descriptor field offsets (docs: ext4 "Block Group Descriptors")
_DESC_CHECKSUM_AT = 0x1E
_BITMAP_CSUM_HI_END = 0x3A
#: the largest range of adjacent bitmap blocks read at once (flex_bg packs them together)
READ_SPAN = 4 * 1024 * 1024
#: the most bitmap bytes held at once (all groups', end to end): 512 MiB, a 16 TiB volume of
#: 4 KiB blocks, as for NTFS (:data:`vmkeep.disks.deleted_blocks.READ_BUDGET`); larger volumes
#: are read as usual
BITMAP_LIMIT = 512 * 1024 * 1024


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16 = _crc16_table()


def crc16(crc: int, data: bytes) -> int:
    """Linux's ``crc16`` (ANSI, reflected 0x8005, no final inversion), continued from ``crc``."""
    for byte in data:
        crc = (crc >> 8) ^ _CRC16[(crc ^ byte) & 0xFF]
    return crc


class _Geometry:
    """What the superblock says, checked; ``problem`` is why it is not trusted, or ``None``."""

    def __init__(self, fs: Any, volume_size: int) -> None:
        sb = fs.sb
        self.block = int(fs.block_size)
        self.blocks = int(fs.block_count)
        self.first = int(sb.s_first_data_block)
        self.per_group = int(sb.s_blocks_per_group)
        self.groups = int(fs.groups_count)
        self.incompat, self.ro = int(sb.s_feature_incompat), int(sb.s_feature_ro_compat)
        wide = self.incompat & INCOMPAT_64BIT and int(sb.s_desc_size)
        self.desc_size = int(sb.s_desc_size) if wide else 32
        self.table_at = int(fs.groups_offset)
        self.inode_blocks = -(-int(sb.s_inodes_per_group) * _inode_size(sb) // self.block)
        self.metadata_csum = bool(self.ro & RO_COMPAT_METADATA_CSUM)
        self.gdt_csum = bool(self.ro & RO_COMPAT_GDT_CSUM) and not self.metadata_csum
        self.uuid = bytes(sb.s_uuid)
        self.seed = csum_seed(sb)
        self.problem = self._problem(fs, sb, volume_size)

    def _problem(self, fs: Any, sb: Any, volume_size: int) -> str | None:
        journaled = bool(int(sb.s_feature_compat) & COMPAT_HAS_JOURNAL)
        state = int(sb.s_state)
        if self.incompat & INCOMPAT_JOURNAL_DEV:
            return "an external journal device, no file system"
        if state & ERROR_FS:
            return "it recorded errors (e2fsck pending)"
        if self.incompat & INCOMPAT_RECOVER:
            return "its journal needs recovery (neither frozen nor cleanly unmounted)"
        if not journaled and not state & VALID_FS:
            return "no journal and not cleanly unmounted"
        if self.incompat & INCOMPAT_META_BG:
            return "meta_bg descriptor layout (not searched)"
        if self.ro & RO_COMPAT_BIGALLOC:
            return "bigalloc clusters (not searched)"
        if (self.per_group <= 0 or self.per_group % 8 or self.per_group > 8 * self.block
                or self.desc_size < 32 or self.desc_size > self.block):
            return f"implausible geometry ({self.per_group} blocks per group)"
        if self.blocks <= self.first or self.blocks * self.block > volume_size:
            return f"its block count ({self.blocks}) does not fit the volume"
        if primary_damaged(fs.fh, "ext"):  # read as it is: list_volumes found no backup copy
            return "its superblock checksum does not match"
        return None


def _inode_size(sb: Any) -> int:
    return int(sb.s_inode_size) if int(sb.s_rev_level) >= 1 and int(sb.s_inode_size) else 128


class _Descriptor:
    """One group descriptor's fields this search needs."""

    def __init__(self, raw: bytes, size: int) -> None:
        lo = struct.unpack_from("<IIIHHHHIHHHH", raw)
        self.block_bitmap, self.inode_bitmap, self.inode_table = lo[0], lo[1], lo[2]
        self.free, self.flags, self.bitmap_csum, self.checksum = lo[3], lo[6], lo[8], lo[11]
        if size >= 64:
            hi = struct.unpack_from("<IIIH", raw, 0x20)
            self.block_bitmap |= hi[0] << 32
            self.inode_bitmap |= hi[1] << 32
            self.inode_table |= hi[2] << 32
            self.free |= hi[3] << 16
        if size >= _BITMAP_CSUM_HI_END:
            self.bitmap_csum |= struct.unpack_from("<H", raw, 0x38)[0] << 16


def free_runs(vol: Volume, min_bytes: int) -> list[tuple[int, int]] | str:
    """Volume ``(offset, length)`` runs of free blocks, or why the bitmaps are not trusted (see
    the module docstring)."""
    from dissect.extfs import ExtFS

    fs = ExtFS(vol.open())
    geo = _Geometry(fs, vol.size)
    if geo.problem is not None:
        return geo.problem
    if geo.groups * (geo.per_group // 8) > BITMAP_LIMIT:
        return (f"its block bitmaps ({geo.groups * (geo.per_group // 8)} bytes) are more than "
                f"one search holds ({BITMAP_LIMIT})")
    table = _read(fs.fh, geo.table_at, geo.groups * geo.desc_size)
    if len(table) < geo.groups * geo.desc_size:
        return "its group descriptor table lies past the volume's end"
    descriptors = []
    for group in range(geo.groups):
        raw = table[group * geo.desc_size:(group + 1) * geo.desc_size]
        if (why := _descriptor_problem(geo, group, raw)) is not None:
            return why
        descriptors.append(_Descriptor(raw, geo.desc_size))
    bitmap = _global_bitmap(fs.fh, geo, descriptors)
    if isinstance(bitmap, str):
        return bitmap
    if (why := _metadata_problem(fs, geo, descriptors, bitmap)) is not None:
        return why
    least = -(-min_bytes // (geo.block * 8))  # whole bitmap bytes of clear bits
    return [((geo.first + first) * geo.block, (end - first) * geo.block)
            for first, end in clear_runs(bitmap, geo.blocks - geo.first, least)]

def _read(fh: Any, offset: int, length: int) -> bytes:
    fh.seek(offset)
    return bytes(fh.read(length))


def _descriptor_problem(geo: _Geometry, group: int, raw: bytes) -> str | None:
    stored = int.from_bytes(raw[_DESC_CHECKSUM_AT:_DESC_CHECKSUM_AT + 2], "little")
    zeroed = raw[:_DESC_CHECKSUM_AT] + b"\0\0" + raw[_DESC_CHECKSUM_AT + 2:]
    number = group.to_bytes(4, "little")
    if geo.metadata_csum:
        if crc32c_raw(geo.seed, number + zeroed) & 0xFFFF != stored:
            return f"group {group}: its descriptor checksum does not match"
    elif geo.gdt_csum:
        crc = crc16(crc16(0xFFFF, geo.uuid), number + raw[:_DESC_CHECKSUM_AT])
        crc = crc16(crc, raw[_DESC_CHECKSUM_AT + 2:]) if geo.desc_size > 32 else crc
        if crc != stored:
            return f"group {group}: its descriptor checksum does not match"
    return None


def _global_bitmap(fh: Any, geo: _Geometry, descriptors: list[_Descriptor]) -> bytearray | str:
    """The block bitmaps of all groups end to end (bit ``i`` is block ``first + i``), groups
    without a bitmap on disk as all in use; or why one of them is not trusted."""
    per = geo.per_group // 8
    out = bytearray(b"\xff" * (geo.groups * per))
    uninit_honoured = geo.metadata_csum or geo.gdt_csum
    wanted = []
    for group, desc in enumerate(descriptors):
        if uninit_honoured and desc.flags & BG_BLOCK_UNINIT:
            continue
        if not geo.first <= desc.block_bitmap < geo.blocks:
            return f"group {group}: its block bitmap lies outside the file system"
        wanted.append((desc.block_bitmap, group))
    wanted.sort()
    i = 0
    while i < len(wanted):  # adjacent bitmap blocks (flex_bg) read in one go
        j = i + 1
        while (j < len(wanted) and wanted[j][0] == wanted[j - 1][0] + 1
               and (j - i + 1) * geo.block <= READ_SPAN):
            j += 1
        data = _read(fh, wanted[i][0] * geo.block, (j - i) * geo.block)
        for k in range(i, j):
            block, group = wanted[k]
            at = (block - wanted[i][0]) * geo.block
            bits = data[at:at + per]
            if len(bits) < per:
                return f"group {group}: its block bitmap lies past the volume's end"
            if (why := _bitmap_problem(geo, group, descriptors[group], bits)) is not None:
                return why
            out[group * per:(group + 1) * per] = bits
        i = j
    return out


def _bitmap_problem(geo: _Geometry, group: int, desc: _Descriptor, bits: bytes) -> str | None:
    if geo.metadata_csum:
        mask = MASK if geo.desc_size >= _BITMAP_CSUM_HI_END else 0xFFFF
        if crc32c_raw(geo.seed, bits) & mask != desc.bitmap_csum:
            return f"group {group}: its block bitmap checksum does not match"
    clear = clear_count(bits, min(geo.per_group, geo.blocks - geo.first - group * geo.per_group))
    if clear != desc.free:
        return (f"group {group}: {clear} blocks free in its bitmap, {desc.free} in its "
                "descriptor")
    return None


def _metadata_problem(
    fs: Any, geo: _Geometry, descriptors: list[_Descriptor], bitmap: bytearray
) -> str | None:
    usable = geo.blocks - geo.first

    def used(block: int, count: int) -> bool:
        return all_set(bitmap, block - geo.first, count, usable)

    table_end = -(-(geo.table_at + geo.groups * geo.desc_size) // geo.block)
    if not used(geo.first, table_end - geo.first):
        return "its superblock or group descriptors lie in blocks its bitmap calls free"
    for group, desc in enumerate(descriptors):
        if geo.first + group * geo.per_group >= geo.blocks:
            break
        if not (used(desc.block_bitmap, 1) and used(desc.inode_bitmap, 1)
                and used(desc.inode_table, geo.inode_blocks)):
            return f"group {group}: its bitmaps or inode table lie in blocks its bitmap calls free"
    journal = int(fs.sb.s_journal_inum)
    if int(fs.sb.s_feature_compat) & COMPAT_HAS_JOURNAL and journal:
        for block, count in fs.get_inode(journal).dataruns():
            if block is not None and not used(block, count):
                return "its journal lies in blocks its bitmap calls free"
    return None

