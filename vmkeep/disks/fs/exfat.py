"""exFAT, read by vmkeep itself: directories one at a time, every entry set checked.

Contract: as :mod:`vmkeep.disks.fs.base`, with exFAT specifics: no owners, links or devices; mode
``0o40755`` for directories, ``0o100644`` (``0o100444`` read-only) for files; a directory's
``inode`` is its first cluster (the walks' cycle check), files have none.  Modification times
carry the writer's UTC offset where it recorded one (``LastModifiedUtcOffset``, as Windows and
Linux write it); without one they are the writer's local time reported as if UTC, like FAT.
Name lookups are exact (case sensitive).  Bytes past a file's ``ValidDataLength`` read as zeros
(what Windows returns for preallocated space).

Why not :class:`dissect.fat.ExFAT`: it parses the whole tree when opened, keyed so that nothing
below the root was found (every volume listed empty), reads only the first cluster of a
contiguous (``NoFatChain``) directory, follows FAT chains without a bound (a cycle never ends) and
checks no entry set.  Here only the boot sector's fields and the FAT are read at open; a directory
is read when listed, from its whole allocation, and the on-disk layout of the Microsoft exFAT
specification (sections 3, 4, 6 and 7) is parsed with ``struct``.

Damage (:class:`~vmkeep.disks.errors.FsDamagedError`, naming the directory's cluster), never a
silent partial listing: an entry set whose ``SetChecksum`` does not match, that runs past the
directory, lacks its stream-extension or file-name entries, or names a cluster outside the heap;
a secondary entry outside a set; a critical primary entry of an unknown type (or a bitmap,
up-case or label entry outside the root); a benign primary (skipped) whose set does not check
either; an in-use entry after the end-of-directory marker; a
FAT chain that leaves the heap, meets a bad or free cluster, or is shorter than its data.
"""

from __future__ import annotations

import calendar
import datetime
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from dissect.util.stream import RunlistStream

from vmkeep.disks.errors import FileSystemError, FsDamagedError
from vmkeep.disks.fs.base import Entry, FileSystem, Node
from vmkeep.disks.overlay import zero_tail
from vmkeep.lru import LRU

ENTRY = 32
END_OF_DIRECTORY = 0x00
FILE, STREAM, NAME = 0x85, 0xC0, 0xC1
ROOT_ONLY = frozenset({0x81, 0x82, 0x83})  # allocation bitmap, up-case table, volume label
IN_USE, SECONDARY, BENIGN = 0x80, 0x40, 0x20
ATTR_READ_ONLY, ATTR_DIRECTORY = 0x01, 0x10
NO_FAT_CHAIN = 0x02
BAD_CLUSTER, END_OF_CHAIN = 0xFFFFFFF7, 0xFFFFFFFF
#: The specification's limit on a directory's size.
MAX_DIRECTORY = 256 << 20
FAT_BLOCK = 64 << 10  # FAT bytes read (and cached) at a time
_BOOT = struct.Struct("<3s8s53sQQIIIIIIHHBBBBB7s")


@dataclass(frozen=True, slots=True)
class _Node:
    """One file or directory: its name entry set's fields the driver uses (root: cluster only)."""

    is_dir: bool
    first_cluster: int
    data_length: int
    valid_length: int
    contiguous: bool
    mtime_ns: int = 0
    read_only: bool = False


class ExFatFileSystem(FileSystem):
    fstype = "exfat"
    case_insensitive = True

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        self.fh = fh
        with self.guard("/"):
            fh.seek(0)
            boot = fh.read(512)
            if len(boot) < 512:
                raise FsDamagedError(name, "boot sector truncated")
            fields = _BOOT.unpack_from(boot)
            (_, fs_name, must_be_zero, _part, volume_length, fat_offset, fat_length, heap_offset,
             cluster_count, root_cluster, _serial, _rev, flags, sector_shift, cluster_shift,
             number_of_fats, _drive, _used, _) = fields
            if fs_name != b"EXFAT   " or any(must_be_zero) or boot[510:512] != b"\x55\xaa":
                raise FsDamagedError(name, "not an exFAT boot sector")
            if not 9 <= sector_shift <= 12 or cluster_shift > 25 - sector_shift:
                raise FsDamagedError(name, "implausible sector or cluster size")
            if number_of_fats not in (1, 2):
                raise FsDamagedError(name, f"{number_of_fats} FATs")
            self.sector = 1 << sector_shift
            self.cluster = self.sector << cluster_shift
            self.sectors_per_cluster = 1 << cluster_shift
            self.heap_offset, self.cluster_count = heap_offset, cluster_count
            active = (flags & 1) if number_of_fats == 2 else 0  # TexFAT: the active FAT
            self.fat_at = (fat_offset + active * fat_length) * self.sector
            if (fat_length * self.sector < (cluster_count + 2) * 4
                    or heap_offset + (cluster_count << cluster_shift) > volume_length):
                raise FsDamagedError(name, "FAT or cluster heap outside the volume")
            self._fat_blocks: LRU[int, bytes] = LRU(64)
            if not self._in_heap(root_cluster):
                raise FsDamagedError(name, f"root directory at cluster {root_cluster} outside "
                                           "the heap")
            chain = self._chain(root_cluster, None)
            self.root = _Node(True, root_cluster, len(chain) * self.cluster, 0, False)

    # -- clusters ----------------------------------------------------------------------------
    def _in_heap(self, cluster: int) -> bool:
        return 2 <= cluster < self.cluster_count + 2

    def _fat_entry(self, cluster: int) -> int:
        at = cluster * 4
        base = at - at % FAT_BLOCK
        block = self._fat_blocks.get(base)
        if block is None:
            self.fh.seek(self.fat_at + base)
            block = self.fh.read(FAT_BLOCK)
            self._fat_blocks.put(base, block)
        if at - base + 4 > len(block):
            raise FsDamagedError(self.name, "FAT truncated")
        value: int = struct.unpack_from("<I", block, at - base)[0]
        return value

    def _chain(self, first: int, clusters: int | None) -> list[int]:
        """The clusters of a FAT chain from ``first``: ``clusters`` of them, or (``None``) up
        to its end.  A chain that leaves the heap, loops or ends early is damage."""
        chain, seen = [first], {first}
        while clusters is None or len(chain) < clusters:
            nxt = self._fat_entry(chain[-1])
            if nxt == END_OF_CHAIN:
                if clusters is None:
                    return chain
                raise FsDamagedError(self.name, f"cluster chain from {first} ends early")
            if not self._in_heap(nxt):
                what = "a bad cluster" if nxt == BAD_CLUSTER else f"cluster {nxt:#x}"
                raise FsDamagedError(self.name, f"cluster chain from {first} meets {what}")
            if nxt in seen:
                raise FsDamagedError(self.name, f"cluster chain from {first} loops")
            seen.add(nxt)
            chain.append(nxt)
        return chain

    def _runlist(self, node: _Node, length: int) -> list[tuple[int | None, int]]:
        """``(sector, sectors)`` runs holding the first ``length`` bytes of ``node``'s data."""
        count = -(-length // self.cluster)
        if count == 0:
            return []
        if not node.contiguous:
            clusters: list[int] | range = self._chain(node.first_cluster, count)
        elif node.first_cluster + count <= self.cluster_count + 2:
            clusters = range(node.first_cluster, node.first_cluster + count)
        else:
            raise FsDamagedError(self.name, f"data at cluster {node.first_cluster} leaves the heap")
        runs: list[tuple[int | None, int]] = []
        start = prev = clusters[0]
        for c in clusters[1:]:
            if c != prev + 1:
                runs.append(self._run(start, prev))
                start = c
            prev = c
        runs.append(self._run(start, prev))
        return runs

    def _run(self, first: int, last: int) -> tuple[int, int]:
        sector = self.heap_offset + ((first - 2) * self.sectors_per_cluster)
        return sector, (last - first + 1) * self.sectors_per_cluster

    def _data(self, node: _Node, length: int) -> BinaryIO:
        return RunlistStream(self.fh, self._runlist(node, length), length, self.sector)

    # -- directories -------------------------------------------------------------------------
    def _root(self) -> Node:
        return self.root

    def _type(self, node: Node) -> str:
        return "dir" if node.is_dir else "file"

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        where = f"directory at cluster {node.first_cluster}"
        if node.data_length % ENTRY or node.data_length > MAX_DIRECTORY:
            raise FsDamagedError(self.name, f"{where}: implausible size {node.data_length}")
        raw = self._data(node, node.data_length).read(node.data_length)
        if len(raw) != node.data_length:
            raise FsDamagedError(self.name, f"{where}: truncated")
        yield from _entries(raw, node is self.root, self, where)

    def _damaged(self, where: str, why: str) -> FsDamagedError:
        return FsDamagedError(self.name, f"{where}: {why}")

    # -- entries and data --------------------------------------------------------------------
    def _entry(self, name: str, path: str, node: Node) -> Entry:
        if node.is_dir:
            return Entry(name=name, path=path, type="dir", size=0, mtime_ns=node.mtime_ns,
                         mode=0o40755, inode=node.first_cluster)
        return Entry(name=name, path=path, type="file", size=node.data_length,
                     mtime_ns=node.mtime_ns, mode=0o100444 if node.read_only else 0o100644)

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        if stream:
            raise FileSystemError(self.name, "exFAT has no named streams")
        if node.data_length == 0:
            return io.BytesIO(b"")
        if node.valid_length >= node.data_length:
            return self._data(node, node.data_length)
        return zero_tail(self._data(node, node.valid_length), node.valid_length,
                         node.data_length)

    def _readlink(self, node: Node) -> str:
        raise ValueError("exFAT has no symbolic links")


def _entries(raw: bytes, is_root: bool, fs: ExFatFileSystem, where: str
             ) -> Iterator[tuple[str, _Node]]:
    """The files and directories of one directory's raw entries (see the module docstring)."""
    count = len(raw) // ENTRY
    i = 0
    while i < count:
        at = i * ENTRY
        kind = raw[at]
        if kind == END_OF_DIRECTORY:
            for k in range(i + 1, count):
                if raw[k * ENTRY]:
                    raise fs._damaged(where, f"entry {k} follows the end of the directory")
            return
        if not kind & IN_USE:  # deleted or unused
            i += 1
            continue
        if kind & SECONDARY:
            raise fs._damaged(where, f"entry {i}: secondary entry {kind:#04x} outside a set")
        if is_root and kind in ROOT_ONLY:  # no entry set: bitmap, up-case table, label
            i += 1
            continue
        if kind != FILE and not kind & BENIGN:
            raise fs._damaged(where, f"entry {i}: unknown critical entry {kind:#04x}")
        secondaries = raw[at + 1]
        if (kind == FILE and not 2 <= secondaries <= 18) or i + secondaries >= count:
            raise fs._damaged(where, f"entry {i}: entry set of {secondaries} secondaries "
                                     "does not fit")
        entry_set = raw[at : at + (1 + secondaries) * ENTRY]
        if any(b & (IN_USE | SECONDARY) != IN_USE | SECONDARY for b in entry_set[ENTRY::ENTRY]):
            raise fs._damaged(where, f"entry {i}: entry set with a free or primary secondary")
        if _set_checksum(entry_set) != struct.unpack_from("<H", entry_set, 2)[0]:
            raise fs._damaged(where, f"entry {i}: entry set checksum mismatch")
        if kind == FILE:
            yield _file(entry_set, fs, where, i)
        i += 1 + secondaries  # a benign primary (volume GUID, TexFAT padding) is skipped


def _file(entry_set: bytes, fs: ExFatFileSystem, where: str, i: int) -> tuple[str, _Node]:
    attributes, modified, modified_10ms, modified_offset = (
        struct.unpack_from("<H", entry_set, 4)[0], struct.unpack_from("<I", entry_set, 12)[0],
        entry_set[21], entry_set[23])
    if entry_set[ENTRY] != STREAM:
        raise fs._damaged(where, f"entry {i}: no stream extension")
    flags, name_length = entry_set[ENTRY + 1], entry_set[ENTRY + 3]
    valid_length, first_cluster, data_length = (
        struct.unpack_from("<Q", entry_set, ENTRY + 8)[0],
        struct.unpack_from("<I", entry_set, ENTRY + 20)[0],
        struct.unpack_from("<Q", entry_set, ENTRY + 24)[0])
    names = -(-name_length // 15)
    if name_length == 0 or 2 + names > len(entry_set) // ENTRY:
        raise fs._damaged(where, f"entry {i}: name of {name_length} characters does not fit")
    parts = []
    for k in range(names):
        at = (2 + k) * ENTRY
        if entry_set[at] != NAME:
            raise fs._damaged(where, f"entry {i}: file-name entry {k} missing")
        parts.append(entry_set[at + 2 : at + ENTRY])
    # an unpaired surrogate kept as it is (see vmkeep.disks.fs.utf16_names), never replaced
    name = b"".join(parts)[: 2 * name_length].decode("utf-16-le", "surrogatepass")
    if name in (".", "..") or "/" in name or "\0" in name:
        raise fs._damaged(where, f"entry {i}: invalid file name {name!r}")
    if data_length and not fs._in_heap(first_cluster):
        raise fs._damaged(where, f"{name!r}: first cluster {first_cluster} outside the heap")
    if valid_length > data_length or data_length > fs.cluster_count * fs.cluster:
        raise fs._damaged(where, f"{name!r}: implausible length")
    return name, _Node(
        is_dir=bool(attributes & ATTR_DIRECTORY), first_cluster=first_cluster,
        data_length=data_length, valid_length=valid_length,
        contiguous=bool(flags & NO_FAT_CHAIN),
        mtime_ns=_mtime_ns(modified, modified_10ms, modified_offset),
        read_only=bool(attributes & ATTR_READ_ONLY),
    )


def _set_checksum(entry_set: bytes) -> int:
    """``EntrySetChecksum`` (specification 6.3.3): every byte but the checksum's own two."""
    return rotating_checksum(entry_set, 16, frozenset({2, 3}))


def rotating_checksum(data: bytes, bits: int, skip: frozenset[int]) -> int:
    """exFAT's checksums — the entry set's (16 bits) and the boot region's (32 bits,
    specification 3.4): rotate right by one bit, add the next byte; bytes at ``skip`` left out."""
    top, mask = bits - 1, (1 << bits) - 1
    checksum = 0
    for index, byte in enumerate(data):
        if index not in skip:
            checksum = (((checksum & 1) << top) + (checksum >> 1) + byte) & mask
    return checksum


def _mtime_ns(stamp: int, increment_10ms: int, utc_offset: int) -> int:
    """A timestamp field (DOS date and time, 2 s), its 10 ms increment and its UTC offset byte
    (bit 7: valid; bits 0–6: signed quarter hours) as ns since the epoch; 0 if invalid."""
    try:
        local = datetime.datetime(
            1980 + (stamp >> 25), (stamp >> 21) & 0xF, (stamp >> 16) & 0x1F,
            (stamp >> 11) & 0x1F, (stamp >> 5) & 0x3F, (stamp & 0x1F) * 2,
        )
    except ValueError:
        return 0
    seconds = calendar.timegm(local.timetuple())
    if utc_offset & 0x80:
        quarters = utc_offset & 0x7F
        if quarters & 0x40:
            quarters -= 0x80
        seconds -= quarters * 15 * 60
    return seconds * 10**9 + min(increment_10ms, 199) * 10**7
