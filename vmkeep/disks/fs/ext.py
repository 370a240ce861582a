"""ext2/3/4 through :mod:`dissect.extfs` (registered as ``ext``).

Contract: as :mod:`vmkeep.disks.fs.base`; ``inode`` is the ext inode number; uid/gid include the
high 16 bits; device nodes, fifos and sockets are ``other`` entries that cannot be opened.

Damaged directories: as :mod:`vmkeep.disks.fs.posix`, and more: a directory's blocks are read
by :func:`dirents`, which checks every block as the kernel does (each entry's ``rec_len`` is at
least 12, a multiple of 4 and within its block, its name fits, the entries end exactly at the
block's end, inode numbers exist).  dissect reads a directory as one stream instead and stops
at a zero ``rec_len`` or jumps where a garbage one leads, in silence: a large directory with one
overwritten block listed 93 of its 400 files.  Directories stored inline in the inode (the rare
``inline_data`` feature) are read here too: ``i_block`` holds the parent's inode number, then
entries to its end, and the ``system.data`` attribute more entries, each part checked by the same
rules (dissect parsed the parent's number as an entry: such a directory listed as empty, in
silence).  A file stored inline is its inode's 60
bytes followed by its ``system.data`` extended attribute, up to its size (dissect read the 60
bytes alone: a 100-byte file came back as 60); one whose two parts are shorter than its size is
damage of that file.  A file encrypted by fscrypt (``EXT4_ENCRYPT_FL``) holds ciphertext only
the guest, with its key, decrypts: opening it is
:class:`~vmkeep.disks.errors.FsContentElsewhereError`, not its ciphertext written out as the file.

With ``metadata_csum`` (mke2fs's default since 2016) metadata is checked by its CRC32C as the
kernel checks it, before it is believed: each inode a listing, a read or a readlink uses (seeded
with the file system's and the inode's own number and generation) and the blocks of its extent
tree (``ext4_extent_tail``), each directory leaf block (its checksum tail) and each hashed
directory's index block (its ``dx_tail``).  A flipped bit in
a name is then damage of that directory instead of a wrong name; in a file's inode (its size or
extents: other bytes restored as the file's) damage of that file alone — listed, not opened.
"""

from __future__ import annotations

import io
import stat
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import google_crc32c
from dissect.extfs import ExtFS
from dissect.extfs.c_ext import FILETYPES, c_ext

from vmkeep.disks.errors import FsContentElsewhereError, FsDamagedError, read_in_guest
from vmkeep.disks.fs.base import Node
from vmkeep.disks.fs.posix import PosixFileSystem

#: ``EXT4_INLINE_DATA_FL``: the inode holds its data (a directory's entries) itself
INLINE_DATA = 0x10000000
#: ``EXT2_FEATURE_INCOMPAT_FILETYPE``: entries carry a file type byte (else a 16-bit name length)
INCOMPAT_FILETYPE = 0x2
#: inode, rec_len, name_len, file_type (or the name length's high byte)
DIRENT = struct.Struct("<IHBB")
#: ``RO_COMPAT_METADATA_CSUM``; ``INCOMPAT_CSUM_SEED`` (the seed is stored, not derived)
RO_COMPAT_METADATA_CSUM, INCOMPAT_CSUM_SEED = 0x400, 0x2000
#: ``EXT4_INDEX_FL``: a hashed (htree) directory, whose first block is its index root
INDEX_FL = 0x1000
#: ``EXT4_EXTENTS_FL``: ``i_block`` holds an extent tree's root; its header's magic
EXTENTS_FL, EXTENT_MAGIC = 0x80000, 0xF30A
#: ``EXT4_MAX_EXTENT_DEPTH``: the kernel's bound on an extent tree's depth
MAX_EXTENT_DEPTH = 5
#: the checksum tail of a directory leaf block: inode 0, rec_len 12, name_len 0, type 0xDE
LEAF_TAIL = struct.pack("<IHBB", 0, 12, 0, 0xDE)
MASK = 0xFFFFFFFF


def crc32c_raw(register: int, data: bytes) -> int:
    """Linux's ``crc32c(register, data)``: CRC32C without the final inversion, which ext4's
    checksums chain from one field to the next (and store as is)."""
    return ~int(google_crc32c.extend(~register & MASK, data)) & MASK


def csum_seed(sb: Any) -> int:
    """The seed every ``metadata_csum`` checksum of the file system starts from: stored in the
    superblock (``INCOMPAT_CSUM_SEED``) or the CRC32C of its UUID."""
    if int(sb.s_feature_incompat) & INCOMPAT_CSUM_SEED:
        return int(sb.s_checksum_seed)
    return crc32c_raw(MASK, bytes(sb.s_uuid))


#: inode flag of a file fscrypt encrypted
ENCRYPT_FL = 0x800
ENCRYPTED_WITH_FSCRYPT = ("it is encrypted (fscrypt): its data is ciphertext that only the guest, "
                          "with its key, decrypts")


class DirectoryDamaged(ValueError):
    """A directory block that is not a chain of directory entries."""


def dirents(
    data: bytes, block_size: int, inodes_count: int, typed: bool
) -> Iterator[tuple[int, bytes, int]]:
    """``(inode, raw name, file type)`` of each used entry in a block-based directory's
    ``data``, first to last; :class:`DirectoryDamaged` for a block that breaks the rules of
    the module docstring (hashed directories' index blocks are single empty entries and pass)."""
    if len(data) % block_size:
        raise DirectoryDamaged(f"its size {len(data)} is not a multiple of {block_size}")
    for start in range(0, len(data), block_size):
        offset, end = start, start + block_size
        while offset < end:
            if end - offset < 12:
                raise DirectoryDamaged(f"block {start // block_size} ends inside an entry")
            inode, rec_len, name_len, high = DIRENT.unpack_from(data, offset)
            if not typed:
                name_len |= high << 8
            if rec_len < 12 or rec_len % 4 or offset + rec_len > end or name_len > rec_len - 8:
                raise DirectoryDamaged(
                    f"block {start // block_size} holds no valid entry at offset "
                    f"{offset - start} (rec_len {rec_len}, name_len {name_len})"
                )
            if inode > inodes_count:  # inodes are numbered 1 … s_inodes_count
                raise DirectoryDamaged(f"block {start // block_size} names inode {inode}")
            if inode:
                yield inode, data[offset + 8 : offset + 8 + name_len], high if typed else 0
            offset += rec_len


class ExtFileSystem(PosixFileSystem):
    fstype = "ext"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = ExtFS(fh)
            sb = self.fs.sb
            self.fh = fh
            self.checksums = bool(sb.s_feature_ro_compat & RO_COMPAT_METADATA_CSUM)
            self.csum_seed = csum_seed(sb)
            self._inode_tables: dict[int, int] = {}

    # -- metadata_csum --------------------------------------------------------------------------
    def _inode_seed(self, inum: int, generation: int) -> int:
        return crc32c_raw(crc32c_raw(self.csum_seed, struct.pack("<I", inum)),
                          struct.pack("<I", generation))

    def _raw_inode(self, node: Node) -> bytes:
        """The inode's bytes on disk, where dissect read them from (its table in its group)."""
        fs = self.fs
        group, index = divmod(node.inum - 1, fs.sb.s_inodes_per_group)
        table = self._inode_tables.get(group)
        if table is None:
            desc = fs._read_group_desc(group)  # dissect's own reading, as for its inodes
            table = int(desc.bg_inode_table_lo)
            if fs._group_desc_struct == c_ext.ext4_group_desc:  # 64-bit descriptors
                table |= int(desc.bg_inode_table_hi) << 32
            self._inode_tables[group] = table  # one number per block group
        self.fh.seek(table * fs.block_size + index * fs.sb.s_inode_size)
        return self.fh.read(fs.sb.s_inode_size)

    def _check_extent_blocks(self, node: Node, raw: bytes) -> None:
        """The extent tree's blocks below the inode (a file of more than four extents): each
        one's magic, entry count and ``ext4_extent_tail`` checksum."""
        if not int.from_bytes(raw[0x20:0x24], "little") & EXTENTS_FL:  # i_flags
            return
        root = raw[0x28 : 0x28 + 60]
        magic, entries, _, depth = struct.unpack_from("<HHHH", root)
        if magic != EXTENT_MAGIC or depth == 0:
            return
        if depth > MAX_EXTENT_DEPTH:
            raise FsDamagedError(self.name, f"inode {node.inum}: extent tree {depth} deep")
        seed = self._inode_seed(node.inum, struct.unpack_from("<I", raw, 0x64)[0])
        size = self.fs.block_size
        pending = [(root, min(entries, 4), depth)]
        while pending:
            block, count, level = pending.pop()
            for k in range(count):
                lo, hi = struct.unpack_from("<IH", block, 12 + 12 * k + 4)
                child = lo | hi << 32
                self.fh.seek(child * size)
                data = self.fh.read(size)
                magic, entries, limit, below = struct.unpack_from("<HHHH", data)
                tail = 12 + 12 * limit
                if (magic != EXTENT_MAGIC or entries > limit or tail + 4 > size
                        or below != level - 1 or crc32c_raw(seed, data[:tail])
                        != struct.unpack_from("<I", data, tail)[0]):
                    raise FsDamagedError(self.name, f"inode {node.inum}: extent block {child}: "
                                                    "checksum mismatch")
                if below:
                    pending.append((data, entries, below))

    def _check_inode(self, node: Node) -> None:
        """The inode's checksum (see the module docstring).  Checked at each use, not
        remembered: a volume's walk would otherwise hold every inode number."""
        if not self.checksums:
            return
        raw = self._raw_inode(node)
        has_hi = len(raw) > 128 and 128 + struct.unpack_from("<H", raw, 0x80)[0] >= 0x84
        zeroed = bytearray(raw)
        zeroed[0x7C:0x7E] = bytes(2)
        stored = struct.unpack_from("<H", raw, 0x7C)[0]
        if has_hi:
            zeroed[0x82:0x84] = bytes(2)
            stored |= struct.unpack_from("<H", raw, 0x82)[0] << 16
        crc = crc32c_raw(self._inode_seed(node.inum, struct.unpack_from("<I", raw, 0x64)[0]),
                         bytes(zeroed))
        if stored != (crc if has_hi else crc & 0xFFFF):
            raise FsDamagedError(self.name, f"inode {node.inum}: checksum mismatch")
        self._check_extent_blocks(node, raw)

    def _check_blocks(self, node: Node, data: bytes) -> None:
        """Each directory block's checksum: a leaf's tail, a hashed directory's index block's
        ``dx_tail`` (its root, block 0, or a node: one empty entry spanning the block); a block
        with neither is damage too (the kernel refuses it as well)."""
        if not self.checksums:
            return
        size = self.fs.block_size
        seed = self._inode_seed(node.inum, int(node.inode.i_generation))
        indexed = bool(node.inode.i_flags & INDEX_FL)
        for number in range(len(data) // size):
            block = data[number * size : (number + 1) * size]
            if block[-12:-4] == LEAF_TAIL:
                ok = crc32c_raw(seed, block[:-12]) == struct.unpack_from("<I", block, size - 4)[0]
            elif indexed and (number == 0 or DIRENT.unpack_from(block) == (0, size, 0, 0)):
                ok = _dx_checksum_ok(block, 0x20 if number == 0 else 8, seed)
            else:
                ok = False
            if not ok:
                raise FsDamagedError(self.name, f"directory inode {node.inum}: block {number}: "
                                                "checksum mismatch")


    def _dots_stored(self, node: Node) -> bool:
        return not node.inode.i_flags & INLINE_DATA

    def directory_entries(self, node: Node) -> list[tuple[int, bytes, int]]:
        """``(inode, raw name, file type)`` of a block-based directory's entries, ``.`` and
        ``..`` included, read and checked (:func:`dirents`' rules, then its inode's and blocks'
        checksums); :class:`FsDamagedError` otherwise.  The one reader of directory blocks,
        for this driver and for the fast listing (:mod:`vmkeep.browse.fastlist`)."""
        self._check_inode(node)
        sb = self.fs.sb
        typed = bool(sb.s_feature_incompat & INCOMPAT_FILETYPE)
        data = node.open().read()
        try:
            found = list(dirents(data, self.fs.block_size, sb.s_inodes_count, typed))
        except DirectoryDamaged as exc:
            raise FsDamagedError(self.name, f"directory inode {node.inum}: {exc}") from None
        self._check_blocks(node, data)
        return found

    def inline_directory_entries(self, node: Node) -> list[tuple[int, bytes, int]]:
        """``(inode, raw name, file type)`` of a directory stored inline (module docstring):
        the entries after the parent's inode number in ``i_block``, then those of its
        ``system.data`` attribute; :class:`FsDamagedError` for a part that breaks
        :func:`dirents`' rules."""
        self._check_inode(node)
        sb = self.fs.sb
        typed = bool(sb.s_feature_incompat & INCOMPAT_FILETYPE)
        parts = [bytes(node.inode.i_block)[4:]]
        parts += [part for part in [_system_data(node)] if part]
        found: list[tuple[int, bytes, int]] = []
        for part in parts:
            try:
                found += dirents(part, len(part), sb.s_inodes_count, typed)
            except DirectoryDamaged as exc:
                raise FsDamagedError(self.name, f"inline directory inode {node.inum}: "
                                                f"{exc}") from None
        return found

    def _stored_entries(self, node: Node) -> Iterator[tuple[str, Node]]:
        if self._dots_stored(node):
            found = self.directory_entries(node)
        else:
            found = self.inline_directory_entries(node)
        named = ((raw.decode(errors="surrogateescape"), inum, ftype) for inum, raw, ftype in found)
        return (
            (name, self.fs.get_inode(inum, name, FILETYPES.get(ftype) if ftype else None))
            for name, inum, ftype in named
        )

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        self._check_inode(node)
        if node.inode.i_flags & ENCRYPT_FL:
            raise FsContentElsewhereError(
                self.name, f"inode {node.inum}: {ENCRYPTED_WITH_FSCRYPT} "
                f"({read_in_guest('the guest')})")
        if node.inode.i_flags & c_ext.EXT4_INLINE_DATA_FL and node.filetype == stat.S_IFREG:
            return io.BytesIO(self._inline_data(node))
        return node.open()

    def _elsewhere(self, node: Node) -> str:
        return ENCRYPTED_WITH_FSCRYPT if node.inode.i_flags & ENCRYPT_FL else ""

    def _inline_data(self, node: Node) -> bytes:
        """A file stored inline: ``i_block`` then its ``system.data`` attribute, to its size."""
        size = int(node.size)
        data = bytes(node.inode.i_block)[:size]
        if size > len(data):
            data += _system_data(node)
        if len(data) < size:
            raise FsDamagedError(self.name, f"inode {node.inum}: its inline data holds "
                                            f"{len(data)} of its {size} bytes")
        return data[:size]

    def _mode(self, node: Node) -> int:
        return int(node.inode.i_mode)

    def _owner(self, node: Node) -> tuple[int, int]:
        ino = node.inode
        return ino.i_uid | (ino.i_uid_high << 16), ino.i_gid | (ino.i_gid_high << 16)

    def _nlink(self, node: Node) -> int:
        return int(node.inode.i_links_count)


def _system_data(node: Node) -> bytes:
    """The ``system.data`` extended attribute of an inline file or directory: the part of its
    contents ``i_block`` has no room for (empty without one)."""
    return b"".join(bytes(a.value) for a in node.xattr if a.name == "system.data")


def _dx_checksum_ok(block: bytes, count_at: int, seed: int) -> bool:
    """A hashed directory's index block (root: counts at 0x20; node: at 8): its ``dx_tail``
    (reserved, checksum) follows ``limit`` entries and covers the ``count`` used ones."""
    limit, count = struct.unpack_from("<HH", block, count_at)
    tail = count_at + limit * 8
    if count > limit or tail + 8 > len(block):
        return False
    crc = crc32c_raw(seed, block[: count_at + count * 8])
    crc = crc32c_raw(crc32c_raw(crc, block[tail : tail + 4]), bytes(4))
    return crc == struct.unpack_from("<I", block, tail + 4)[0]
