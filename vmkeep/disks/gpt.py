"""A GPT checked by its CRC32s, with the backup GPT when the primary is damaged, as the kernel
and ``gdisk`` read one (UEFI specification 2.10, section 5.3).

Contract: :func:`checked_table` takes a disk that begins with a GPT and returns the stream the
partition parser should read plus a warning (or ``None``):

- the primary header (LBA 1) is valid when its signature, header size (92 … 512), header CRC32,
  own LBA (1) and partition-entry array CRC32 all hold: the disk itself, no warning;
- else the backup header (the last LBA, pointing at its own entry array before it) is checked
  the same way; when valid, the parser gets a view of the disk whose LBA 1 and entry array are
  the backup's (rewritten as a primary: own LBA 1, entries at LBA 2) and a warning names what was
  wrong with the primary; the volumes themselves are still read from the disk;
- when neither is valid (a backup is also missing after a disk was grown until the guest moves
  it), the disk itself is parsed as before, with a warning.

Reads at most the two headers and two entry arrays (≤ 16 MiB each); writes nothing.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

from vmkeep.disks.overlay import overlay

SECTOR = 512
#: signature, revision, header size, header CRC32, reserved, own LBA, alternate LBA,
#: first/last usable LBA, disk GUID, entries LBA, entry count, entry size, entries CRC32
HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
MAX_ENTRIES, MAX_ENTRY_SIZE = 4096, 4096


def checked_table(disk: BinaryIO, disk_size: int) -> tuple[BinaryIO, str | None]:
    """The stream to parse the partition table from, and a warning (see the module docstring)."""
    last = disk_size // SECTOR - 1
    primary, why = _valid(disk, 1, last)
    if primary is not None:
        return disk, None
    backup, backup_why = _valid(disk, last, last) if last > 1 else (None, "no room")
    if backup is None:
        return disk, (f"the primary GPT is damaged ({why}) and no valid backup GPT was found "
                      f"({backup_why}): partitions read from the primary as it is")
    header, entries = backup
    fields = list(HEADER.unpack_from(header))
    fields[3], fields[5], fields[6], fields[10] = 0, 1, last, 2  # as a primary: entries at LBA 2
    rewritten = bytearray(HEADER.pack(*fields)) + header[HEADER.size :]
    struct.pack_into("<I", rewritten, 16, zlib.crc32(rewritten[: fields[2]]))
    view = overlay(disk, disk_size, SECTOR, bytes(rewritten).ljust(SECTOR, b"\0") + entries)
    return view, f"the primary GPT is damaged ({why}): partitions read from the backup GPT"


def _valid(disk: BinaryIO, lba: int, last: int) -> tuple[tuple[bytes, bytes] | None, str]:
    """``((header sector, entry array), "")`` when the header at ``lba`` and its entries are
    valid, else ``(None, why)``."""
    disk.seek(lba * SECTOR)
    sector = disk.read(SECTOR)
    if len(sector) < SECTOR or sector[:8] != b"EFI PART":
        return None, "no GPT signature"
    (_, _, size, crc, _, own, _, _, _, _, entries_lba, count, entry_size,
     entries_crc) = HEADER.unpack_from(sector)
    if not HEADER.size <= size <= SECTOR:
        return None, f"header size {size}"
    zeroed = bytearray(sector[:size])
    zeroed[16:20] = bytes(4)
    if zlib.crc32(zeroed) != crc:
        return None, "header CRC mismatch"
    if own != lba:
        return None, f"header says it is at LBA {own}"
    if not 0 < count <= MAX_ENTRIES or not 128 <= entry_size <= MAX_ENTRY_SIZE:
        return None, f"{count} entries of {entry_size} bytes"
    length = count * entry_size
    if entries_lba < 2 or entries_lba + -(-length // SECTOR) > last + 1:
        return None, f"entry array at LBA {entries_lba} outside the disk"
    disk.seek(entries_lba * SECTOR)
    entries = disk.read(length)
    if len(entries) != length or zlib.crc32(entries) != entries_crc:
        return None, "partition entries CRC mismatch"
    return (sector, entries), ""
