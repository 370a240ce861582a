"""Partition tables written with Python on plain image files (no loop devices, no sfdisk).

:func:`write_gpt` writes a protective MBR, the primary GPT header and entries and the backup
copies; :func:`write_mbr` writes a classic MBR. Partitions are ``(first_lba, last_lba, kind,
name)`` with 512-byte sectors; ``kind`` is a GPT type GUID string or an MBR type byte.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import BinaryIO

SECTOR = 512
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MBR_NTFS = 0x07
MBR_FAT32_LBA = 0x0C
MBR_LINUX = 0x83


def _protective_mbr(total_sectors: int) -> bytes:
    mbr = bytearray(512)
    n = min(total_sectors - 1, 0xFFFFFFFF)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, n)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def write_gpt(
    f: BinaryIO,
    disk_size: int,
    parts: list[tuple[int, int, str, str]],
    disk_guid: uuid.UUID,
    part_guids: list[uuid.UUID],
    attributes: list[int] | None = None,
) -> None:
    """GPT with ``parts`` (first LBA, last LBA, type GUID, name); ``attributes`` per partition
    (bit 2: legacy BIOS bootable, what SYSLINUX's ``gptmbr.bin`` boots)."""
    total = disk_size // SECTOR
    attrs = attributes or [0] * len(parts)
    last = total - 1
    entries = bytearray(128 * 128)
    for i, ((first, end, kind, name), pg) in enumerate(zip(parts, part_guids, strict=True)):
        entries[i * 128 : (i + 1) * 128] = struct.pack(
            "<16s16sQQQ72s",
            uuid.UUID(kind).bytes_le,
            pg.bytes_le,
            first,
            end,
            attrs[i],
            name.encode("utf-16-le")[:72].ljust(72, b"\0"),
        )
    entries_crc = zlib.crc32(bytes(entries)) & 0xFFFFFFFF

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = [
            b"EFI PART",
            0x00010000,
            92,
            0,
            0,
            current,
            backup,
            34,
            last - 33,
            disk_guid.bytes_le,
            entries_lba,
            128,
            128,
            entries_crc,
        ]
        fmt = "<8sIIIIQQQQ16sQIII"
        raw = struct.pack(fmt, *fields)
        crc = zlib.crc32(raw) & 0xFFFFFFFF
        fields[3] = crc
        return struct.pack(fmt, *fields).ljust(SECTOR, b"\0")

    f.seek(0)
    f.write(_protective_mbr(total))
    f.seek(1 * SECTOR)
    f.write(header(1, last, 2))
    f.seek(2 * SECTOR)
    f.write(entries)
    f.seek((last - 32) * SECTOR)
    f.write(entries)
    f.seek(last * SECTOR)
    f.write(header(last, 1, last - 32))


def write_mbr(f: BinaryIO, parts: list[tuple[int, int, int, bool]], signature: int) -> None:
    """``parts``: ``(first_lba, last_lba, type_byte, bootable)``."""
    mbr = bytearray(512)
    mbr[440:444] = struct.pack("<I", signature)
    for i, (first, end, kind, boot) in enumerate(parts):
        mbr[446 + 16 * i : 462 + 16 * i] = struct.pack(
            "<B3sB3sII",
            0x80 if boot else 0,
            b"\xfe\xff\xff",
            kind,
            b"\xfe\xff\xff",
            first,
            end - first + 1,
        )
    mbr[510:512] = b"\x55\xaa"
    f.seek(0)
    f.write(bytes(mbr))
