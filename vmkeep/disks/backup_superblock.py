"""A volume whose superblock is damaged, read through a backup copy, as the file system's own
repair tools do (``e2fsck -b``, ``xfs_repair``, ``btrfs rescue super-recover``).

Contract: :func:`primary_damaged` says whether the superblock a volume's magic claims (``ext``,
``xfs``, ``btrfs``) fails its own checks; :func:`from_backup` is asked about such a volume or one
no file system claims.  It returns a :class:`Backup` — the file system, the byte ranges to put over
the damaged ones (:func:`vmkeep.disks.overlay.overlay`) and which copy was used — or ``None``.
Copies are found without trusting the primary, each checked as strictly as a primary:

- ext2/3/4: the backup superblock of block group 1, else 3 (``sparse_super``'s first two), for
  each block size from 1 to 64 KiB with the 8 × block-size blocks per group ``mke2fs`` gives, as
  ``e2fsck`` looks for them: magic, its own block size, blocks per group and group number, and
  its checksum where ``metadata_csum`` is on.  The group descriptors behind the
  backup replace the primary's when the two disagree on where a group's bitmaps or inode table
  live (a zeroed start loses both); a ``meta_bg`` file system keeps its primary descriptors.
- XFS: the secondary superblock at the start of allocation group 1, found from AG 0's AGF (its
  length, for each block size) or from ``mkfs.xfs``'s default geometry (4 KiB blocks) for the
  volume's size, checked by magic, CRC
  (version 5), and that its AG size puts it where it was found.  AG 0's other headers (AGF, AGI)
  must be readable: ``xfs_repair`` rebuilds them, vmkeep does not.
- Btrfs: the superblock mirrors at 64 MiB and 256 GiB, checked by magic, own address and
  checksum; the newest generation wins.

Reads at most a few KiB per candidate (about thirty candidates, fewer on a small volume);
writes nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from vmkeep.disks.fs.btrfs import checksum as btrfs_checksum
from vmkeep.disks.fs.ext import MASK, crc32c_raw
from vmkeep.disks.fs.xfs import crc_ok as xfs_crc_ok

KiB, MiB, GiB, TiB = 1024, 1 << 20, 1 << 30, 1 << 40

EXT_MAGIC = 0xEF53
EXT_PRIMARY = 1024  # the primary superblock's byte offset, whatever the block size
EXT_BACKUP_GROUPS = (1, 3)  # sparse_super's first two (e2fsck tries group 1 only)
EXT_RO_METADATA_CSUM, EXT_RO_BIGALLOC = 0x400, 0x200
EXT_INCOMPAT_META_BG, EXT_INCOMPAT_64BIT = 0x10, 0x80
EXT_MAX_DESC_SIZE = 1024  # the kernel's EXT4_MAX_DESC_SIZE
#: the most group-descriptor bytes read (a 64 TiB file system of 4 KiB blocks has 32 MiB)
EXT_MAX_DESCRIPTORS = 64 * MiB

XFS_MAGIC = b"XFSB"
XFS_SB_CRC = 224
XFS_AGF_MAGIC = b"XAGF"

BTRFS_PRIMARY, BTRFS_MIRRORS = 64 * KiB, (64 * MiB, 256 * GiB)
BTRFS_MAGIC, BTRFS_SUPER_SIZE = b"_BHRfS_M", 4096


@dataclass(frozen=True)
class Backup:
    """The file system found, the byte ranges ``(offset, bytes)`` to lay over the volume, and
    which copy they came from (for the warning)."""

    fs: str
    patches: tuple[tuple[int, bytes], ...]
    which: str


def primary_damaged(volume: BinaryIO, fs: str | None) -> bool:
    """Whether the primary superblock of ``fs`` fails its own checks (ext, XFS, Btrfs only)."""
    if fs == "ext":
        return not _ext_valid(_read(volume, EXT_PRIMARY, 1024), None, None)
    if fs == "xfs":
        return not _xfs_valid(_read(volume, 0, 512), volume, None)
    if fs == "btrfs":
        sb = _read(volume, BTRFS_PRIMARY, BTRFS_SUPER_SIZE)
        return not _btrfs_valid(sb, BTRFS_PRIMARY, unknown_ok=True)
    return False


def from_backup(volume: BinaryIO, size: int, fs: str | None = None) -> Backup | None:
    """The volume through a backup superblock of ``fs`` (any of the three when ``None``; see
    the module docstring), or ``None``."""
    finders = {"ext": _ext_backup, "xfs": _xfs_backup, "btrfs": _btrfs_backup}
    for kind, find in finders.items():
        if fs in (None, kind):
            found = find(volume, size)
            if found is not None:
                return found
    return None


def _read(volume: BinaryIO, offset: int, length: int) -> bytes:
    volume.seek(offset)
    return volume.read(length)


# -- ext2/3/4 -------------------------------------------------------------------------------------
def _ext_valid(sb: bytes, log: int | None, group: int | None) -> bool:
    """An ext superblock that passes its checks.  ``log``/``group``: a backup's block size and
    group as guessed from where it was found, which it must confirm (with mke2fs's 8 × block
    size blocks per group); the primary is held to what any ext superblock must be."""
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != EXT_MAGIC:
        return False
    sb_log, = struct.unpack_from("<I", sb, 0x18)
    blocks_per_group, = struct.unpack_from("<I", sb, 0x20)
    ro_compat, = struct.unpack_from("<I", sb, 0x64)
    bitmap_bits = 8 * (1024 << sb_log) if sb_log <= 6 else 0  # one bitmap block per group
    if not 0 < blocks_per_group <= bitmap_bits and not ro_compat & EXT_RO_BIGALLOC:
        return False
    if log is not None and (sb_log, blocks_per_group, struct.unpack_from("<H", sb, 0x5A)[0]) != (
            log, bitmap_bits, group):
        return False
    return not ro_compat & EXT_RO_METADATA_CSUM or (
        crc32c_raw(MASK, sb[:0x3FC]) == struct.unpack_from("<I", sb, 0x3FC)[0])


def _ext_backup(volume: BinaryIO, size: int) -> Backup | None:
    for group in EXT_BACKUP_GROUPS:
        for log in range(7):
            block = 1024 << log
            first = 1 if block == 1024 else 0  # s_first_data_block
            start = first + group * 8 * block  # the group's first block: its backup superblock
            if (start + 1) * block > size:
                continue
            sb = _read(volume, start * block, 1024)
            if _ext_valid(sb, log, group):
                patches = [(EXT_PRIMARY, sb)]
                gdt = _ext_descriptors(volume, sb, block, first, start, size)
                if gdt is not None:
                    patches.append(gdt)
                where = f"the backup superblock of block group {group} (block {start})"
                return Backup("ext", tuple(patches), where)
    return None


def _ext_descriptors(
    volume: BinaryIO, sb: bytes, block: int, first: int, start: int, size: int
) -> tuple[int, bytes] | None:
    """The backup group descriptors (behind the backup superblock at block ``start``) as a patch
    over the primary's, when the two place any group's bitmaps or inode table differently.  A
    superblock describing more blocks than the volume holds, or descriptors of an impossible
    size, gets no patch (guest data: nothing is read past what it can hold)."""
    incompat, = struct.unpack_from("<I", sb, 0x60)
    if incompat & EXT_INCOMPAT_META_BG:
        return None
    blocks = struct.unpack_from("<I", sb, 0x04)[0]
    desc_size = 32
    if incompat & EXT_INCOMPAT_64BIT:
        blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
        desc_size = max(32, struct.unpack_from("<H", sb, 0xFE)[0])
    if blocks * block > size or desc_size > EXT_MAX_DESC_SIZE or desc_size & (desc_size - 1):
        return None
    groups = -(-(blocks - first) // (8 * block))
    length = -(-(groups * desc_size) // block) * block
    if length > EXT_MAX_DESCRIPTORS:
        return None
    backup = _read(volume, (start + 1) * block, length)
    primary = _read(volume, (first + 1) * block, length)
    if len(backup) < length:
        return None
    if _ext_places(primary, groups, desc_size) == _ext_places(backup, groups, desc_size):
        return None
    return (first + 1) * block, backup


def _ext_places(table: bytes, groups: int, desc_size: int) -> list[tuple[int, ...]]:
    """Each group's block bitmap, inode bitmap and inode table (low, and high where 64-bit)."""
    out = []
    for g in range(groups):
        desc = table[g * desc_size : (g + 1) * desc_size]
        if len(desc) < desc_size:
            return []
        out.append(struct.unpack_from("<III", desc, 0) + (
            struct.unpack_from("<III", desc, 0x20) if desc_size >= 64 else ()))
    return out


# -- XFS ------------------------------------------------------------------------------------------
def _xfs_valid(sb: bytes, volume: BinaryIO, at: int | None) -> bool:
    """An XFS superblock that passes its checks; ``at`` is where a secondary was found."""
    if len(sb) < 512 or sb[:4] != XFS_MAGIC:
        return False
    blocksize, = struct.unpack_from(">I", sb, 4)
    agblocks, agcount = struct.unpack_from(">II", sb, 84)
    version, sectsize = struct.unpack_from(">HH", sb, 100)
    if not (512 <= blocksize <= 65536 and blocksize & (blocksize - 1) == 0 and agblocks
            and agcount and sectsize in (512, 1024, 2048, 4096, 32768)):
        return False
    if at is not None and agblocks * blocksize != at:
        return False
    if version & 0xF == 5:
        whole = sb if len(sb) >= sectsize else sb + _read(volume, (at or 0) + len(sb),
                                                           sectsize - len(sb))
        return xfs_crc_ok(whole[:sectsize], XFS_SB_CRC)
    return True


def _xfs_backup(volume: BinaryIO, size: int) -> Backup | None:
    for at in _xfs_candidates(volume, size):
        if 0 < at < size:
            sb = _read(volume, at, 512)
            if _xfs_valid(sb, volume, at):
                sectsize = struct.unpack_from(">H", sb, 102)[0]
                sector = sb + _read(volume, at + 512, sectsize - 512)
                return Backup("xfs", ((0, sector),),
                              f"the secondary superblock of allocation group 1 (byte {at})")
    return None


def _xfs_candidates(volume: BinaryIO, size: int) -> list[int]:
    """Where AG 1 may start: from AG 0's AGF if it survived (its length, for each block size),
    then from mkfs.xfs's default AG count for a file system filling the volume."""
    out: list[int] = []
    for sector in (512, 4096):
        agf = _read(volume, sector, 16)
        if agf[:4] == XFS_AGF_MAGIC and struct.unpack_from(">I", agf, 8)[0] == 0:
            length, = struct.unpack_from(">I", agf, 12)
            out += [length << log for log in range(9, 17)]
    log = 12  # mkfs.xfs's default block size
    out += [_xfs_default_agblocks(size >> log, log, shift) << log for shift in range(6)]
    return list(dict.fromkeys(out))


def _xfs_default_agblocks(dblocks: int, log: int, shift: int) -> int:
    """``calc_default_ag_geometry``: ``dblocks`` split into ``2 ** shift`` AGs, rounded up, at
    most 1 TiB per AG (4 AGs for one disk up to 4 TiB; 2–32 AGs by size for striped volumes)."""
    most = TiB >> log
    blocks = dblocks >> shift
    if dblocks & ((1 << shift) - 1) and blocks < most:
        blocks += 1
    return min(blocks, most)


# -- Btrfs ----------------------------------------------------------------------------------------
def _btrfs_valid(sb: bytes, at: int, unknown_ok: bool = False) -> bool:
    """A Btrfs superblock at ``at`` that passes its checks; one whose checksum type this reader
    does not know passes only with ``unknown_ok`` (a primary, not judged)."""
    if len(sb) < BTRFS_SUPER_SIZE or sb[0x40:0x48] != BTRFS_MAGIC:
        return False
    if struct.unpack_from("<Q", sb, 0x30)[0] != at:
        return False
    csum_type, = struct.unpack_from("<H", sb, 0xC4)
    try:
        want = btrfs_checksum(csum_type, sb[0x20:])
    except ValueError:
        return unknown_ok
    return sb[: len(want)] == want


def _btrfs_backup(volume: BinaryIO, size: int) -> Backup | None:
    best: tuple[int, int, bytes] | None = None
    for at in BTRFS_MIRRORS:
        if at + BTRFS_SUPER_SIZE <= size:
            sb = _read(volume, at, BTRFS_SUPER_SIZE)
            if _btrfs_valid(sb, at):
                generation, = struct.unpack_from("<Q", sb, 0x48)
                if best is None or generation > best[0]:
                    best = (generation, at, sb)
    if best is None:
        return None
    _, at, sb = best
    return Backup("btrfs", ((BTRFS_PRIMARY, sb),), f"the superblock mirror at {at // MiB} MiB")
