"""Recognise what a byte range holds from its magic bytes (never from names or partition types).

Contract: :func:`identify` reads at most :data:`PROBE_SIZE` bytes from the start of a seekable
file-like and returns one of ``ext``, ``xfs``, ``btrfs``, ``ntfs``, ``exfat``, ``fat``, ``lvm2``,
``swap``, ``luks``, ``gpt``, ``mbr`` or ``None``.  File-system magics that live in sector 0 (NTFS,
exFAT, FAT, XFS) win over an MBR signature, since a FAT/NTFS boot sector also ends in ``55 AA``;
``gpt`` needs the ``EFI PART`` header at LBA 1.  It never raises on short or odd input; read
errors propagate as ``OSError``.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

PROBE_SIZE = 0x10000 + 0x1000  # Btrfs's superblock sits at 64 KiB

FS_TYPES = ("ext", "xfs", "btrfs", "ntfs", "exfat", "fat")


def read_head(fh: BinaryIO, size: int = PROBE_SIZE) -> bytes:
    """Read up to ``size`` bytes from offset 0 (tolerating short streams)."""
    fh.seek(0)
    chunks: list[bytes] = []
    got = 0
    while got < size:
        data = fh.read(size - got)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def identify(fh: BinaryIO) -> str | None:
    """What the stream starts with (see the module docstring)."""
    return identify_bytes(read_head(fh))


def identify_bytes(head: bytes) -> str | None:
    """Like :func:`identify` over the first bytes of a stream."""
    sector0 = head[:512]
    if sector0[3:11] == b"NTFS    ":
        return "ntfs"
    if sector0[3:11] == b"EXFAT   ":
        return "exfat"
    if _is_fat(sector0):
        return "fat"
    if sector0[:4] == b"XFSB":
        return "xfs"
    if head[512:520] == b"EFI PART":
        return "gpt"
    if sector0[:6] == b"LUKS\xba\xbe":
        return "luks"
    if any(head[i * 512 : i * 512 + 8] == b"LABELONE" for i in range(4)):
        return "lvm2"
    if head[1080:1082] == b"\x53\xef":
        return "ext"
    if head[0x10040:0x10048] == b"_BHRfS_M":
        return "btrfs"
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    if len(sector0) == 512 and sector0[510:512] == b"\x55\xaa" and _mbr_sane(sector0):
        return "mbr"
    return None


def _is_fat(sector0: bytes) -> bool:
    if len(sector0) < 512 or sector0[510:512] != b"\x55\xaa":
        return False
    if not (sector0[54:57] == b"FAT" or sector0[82:87] == b"FAT32"):
        return False
    bps, sectors_per_cluster, reserved, nfats = struct.unpack_from("<HBHB", sector0, 11)
    return (
        bps in (512, 1024, 2048, 4096)
        and sectors_per_cluster in (1, 2, 4, 8, 16, 32, 64, 128)
        and reserved >= 1
        and nfats >= 1
    )


def _mbr_sane(sector0: bytes) -> bool:
    used = 0
    for i in range(4):
        entry = sector0[446 + 16 * i : 462 + 16 * i]
        status, ptype = entry[0], entry[4]
        start, count = struct.unpack_from("<II", entry, 8)
        if status not in (0x00, 0x80):
            return False
        if ptype and count:
            if start == 0:
                return False
            used += 1
    return used > 0
