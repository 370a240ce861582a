"""XFS through :mod:`dissect.xfs` (registered as ``xfs``).

Contract: as :mod:`vmkeep.disks.fs.base`; ``inode`` is the absolute XFS inode number.

Damaged directories: as :mod:`vmkeep.disks.fs.posix`, and more: every block a directory's data
segment maps must begin with a directory data magic (``XD2B``/``XD2D``, ``XDB3``/``XDD3``).
dissect takes a block without one for a hole in silence — a large directory with one overwritten
block listed 316 of its 400 files; holes are only the blocks the directory does not map.
Directory blocks larger than a file system block (``mkfs.xfs -n size=…``) are refused with a
typed error: dissect reads them one file system block at a time and would drop entries.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from dissect.xfs import XFS
from dissect.xfs.c_xfs import c_xfs

from vmkeep.disks.errors import FileSystemError, FsDamagedError
from vmkeep.disks.fs.base import Node
from vmkeep.disks.fs.posix import PosixFileSystem

#: directory data block magics: v4 single-block and data, v5 (CRC) single-block and data
DATA_MAGICS = frozenset({c_xfs.XFS_DIR2_BLOCK_MAGIC, c_xfs.XFS_DIR2_DATA_MAGIC,
                         c_xfs.XFS_DIR3_BLOCK_MAGIC, c_xfs.XFS_DIR3_DATA_MAGIC})
#: a short-form directory, inside the inode
LOCAL = int(c_xfs.xfs_dinode_fmt.XFS_DINODE_FMT_LOCAL)


class XfsFileSystem(PosixFileSystem):
    fstype = "xfs"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = XFS(fh)

    def _stored_entries(self, node: Node) -> Iterator[tuple[str, Node]]:
        if int(node.inode.di_format) != LOCAL:
            self._check_data_blocks(node)
        return super()._stored_entries(node)

    def _check_data_blocks(self, node: Node) -> None:
        """Every mapped block of the directory's data segment is a directory data block."""
        if self.fs.sb.sb_dirblklog:
            raise FileSystemError(
                self.name, f"directory inode {node.inum}: directory blocks of "
                f"{self.fs.block_size << self.fs.sb.sb_dirblklog} bytes are not supported"
            )
        size, stream, block = int(node.size), node.open(), 0
        for start, count in node.dataruns:  # (first block or None for a hole, count)
            for number in range(block, min(block + count, size // self.fs.block_size)):
                if start is None:
                    continue  # a hole: blocks whose entries were all removed
                stream.seek(number * self.fs.block_size)
                head = stream.read(4)
                if len(head) < 4 or struct.unpack(">I", head)[0] not in DATA_MAGICS:
                    raise FsDamagedError(
                        self.name, f"directory inode {node.inum}: block {number} is not a "
                        "directory data block"
                    )
            block += count

    def _mode(self, node: Node) -> int:
        return int(node.inode.di_mode)

    def _owner(self, node: Node) -> tuple[int, int]:
        return int(node.inode.di_uid), int(node.inode.di_gid)

    def _nlink(self, node: Node) -> int:
        ino = node.inode
        return int(ino.di_nlink or ino.di_onlink)
