"""ext2/3/4 through :mod:`dissect.extfs` (registered as ``ext``).

Contract: as :mod:`vmkeep.disks.fs.base`; ``inode`` is the ext inode number; uid/gid include the
high 16 bits; device nodes, fifos and sockets are ``other`` entries that cannot be opened.

Damaged directories: as :mod:`vmkeep.disks.fs.posix`, and more: a directory's blocks are read
by :func:`dirents`, which checks every block as the kernel does (each entry's ``rec_len`` is at
least 12, a multiple of 4 and within its block, its name fits, the entries end exactly at the
block's end, inode numbers exist).  dissect reads a directory as one stream instead and stops
at a zero ``rec_len`` or jumps where a garbage one leads, in silence: a large directory with one
overwritten block listed 93 of its 400 files.  Directories stored inline in the inode (the rare
``inline_data`` feature) are read by dissect, unchecked.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from dissect.extfs import ExtFS
from dissect.extfs.c_ext import FILETYPES

from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs.base import Node
from vmkeep.disks.fs.posix import PosixFileSystem

#: ``EXT4_INLINE_DATA_FL``: the inode holds its data (a directory's entries) itself
INLINE_DATA = 0x10000000
#: ``EXT2_FEATURE_INCOMPAT_FILETYPE``: entries carry a file type byte (else a 16-bit name length)
INCOMPAT_FILETYPE = 0x2
#: inode, rec_len, name_len, file_type (or the name length's high byte)
DIRENT = struct.Struct("<IHBB")


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

    def _dots_stored(self, node: Node) -> bool:
        return not node.inode.i_flags & INLINE_DATA

    def _stored_entries(self, node: Node) -> Iterator[tuple[str, Node]]:
        if not self._dots_stored(node):
            return super()._stored_entries(node)  # inline: dissect's reading
        sb = self.fs.sb
        typed = bool(sb.s_feature_incompat & INCOMPAT_FILETYPE)
        try:
            found = list(dirents(node.open().read(), self.fs.block_size, sb.s_inodes_count, typed))
        except DirectoryDamaged as exc:
            raise FsDamagedError(self.name, f"directory inode {node.inum}: {exc}") from None
        named = ((raw.decode(errors="surrogateescape"), inum, ftype) for inum, raw, ftype in found)
        return (
            (name, self.fs.get_inode(inum, name, FILETYPES.get(ftype) if ftype else None))
            for name, inum, ftype in named
        )

    def _mode(self, node: Node) -> int:
        return int(node.inode.i_mode)

    def _owner(self, node: Node) -> tuple[int, int]:
        ino = node.inode
        return ino.i_uid | (ino.i_uid_high << 16), ino.i_gid | (ino.i_gid_high << 16)

    def _nlink(self, node: Node) -> int:
        return int(node.inode.i_links_count)
