"""A volume whose boot sector is gone, read from its backup boot sector, as the file system's
own repair tools do (``chkdsk``, ``ntfsfix``, ``fsck.fat``, ``fsck.exfat``).

Contract: :func:`from_backup` is asked only about a volume whose first sector no file system
claims.  It returns ``(fs, patch, which)`` when a backup boot sector holds — its file system, the
bytes to put over the volume's damaged start (:func:`vmkeep.disks.overlay.overlay` at offset 0),
and which copy was used — else ``None``.  Copies, each checked as :mod:`vmkeep.disks.magic`
checks a primary:

- NTFS: the volume's last sector (where ``mkntfs`` and Windows keep it);
- FAT32: sector 6 (``BPB_BkBootSec``'s conventional place) and its FSInfo at 7;
- exFAT: the backup boot region, sectors 12–23 (checked by its boot checksum, sector 23).

Reads at most 12 KiB and the last sector; writes nothing.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from vmkeep.disks.fs.exfat import rotating_checksum
from vmkeep.disks.magic import identify_bytes, read_head

SECTOR = 512
#: the boot sector's VolumeFlags (2 bytes) and PercentInUse, which the boot checksum leaves out
_BOOT_SKIP = frozenset({106, 107, 112})


def from_backup(volume: BinaryIO, size: int) -> tuple[str, bytes, str] | None:
    """The volume through its backup boot sector (see the module docstring), or ``None``."""
    head = read_head(volume, 24 * SECTOR)
    region = head[12 * SECTOR : 24 * SECTOR]
    if len(region) == 12 * SECTOR and identify_bytes(region[:SECTOR]) == "exfat" and (
            _exfat_checksum(region) == region[11 * SECTOR : 11 * SECTOR + 4]):
        return "exfat", region, "the backup boot region (sector 12)"
    fat32 = head[6 * SECTOR : 8 * SECTOR]
    if len(fat32) == 2 * SECTOR and identify_bytes(fat32[:SECTOR]) == "fat" and (
            fat32[82:87] == b"FAT32"):
        return "fat", fat32, "the backup boot sector (sector 6)"
    if size >= 2 * SECTOR:
        volume.seek(size - SECTOR)
        last = volume.read(SECTOR)
        if len(last) == SECTOR and identify_bytes(last) == "ntfs" and last[510:] == b"\x55\xaa":
            return "ntfs", last, "the backup boot sector (last sector)"
    return None


def _exfat_checksum(region: bytes) -> bytes:
    """The exFAT boot checksum of sectors 0–10 of a boot region (specification 3.4), as stored;
    ``VolumeFlags`` and ``PercentInUse`` are left out."""
    return struct.pack("<I", rotating_checksum(region[: 11 * SECTOR], 32, _BOOT_SKIP))
