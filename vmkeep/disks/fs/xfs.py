"""XFS through :mod:`dissect.xfs` (registered as ``xfs``).

Contract: as :mod:`vmkeep.disks.fs.base`; ``inode`` is the absolute XFS inode number.

Damaged directories: as :mod:`vmkeep.disks.fs.posix`, and more: every block a directory's data
segment maps must begin with a directory data magic (``XD2B``/``XD2D``, ``XDB3``/``XDD3``).
dissect takes a block without one for a hole in silence — a large directory with one overwritten
block listed 316 of its 400 files; holes are only the blocks the directory does not map.
Directory blocks larger than a file system block (``mkfs.xfs -n size=…``) are refused with a
typed error: dissect reads them one file system block at a time and would drop entries.

Version 5 (CRC) file systems — mkfs.xfs's default since 2015 — are checked as the kernel checks
them, before dissect parses what it reads: each directory data block (``XDB3``/``XDD3``) against
its CRC, its own disk address, its directory's inode number and the file system's UUID; each
inode a directory listing, a file read or a link reads against its CRC, inode number and UUID.
A flipped bit in a directory block (a name listed wrong, in silence) is damage of that directory;
in a file's inode (its size or extents: other bytes restored as the file's, in silence) it is
damage of that file alone — the listing still shows it, opening it fails.

Unwritten extents — space a program reserved with ``fallocate`` (databases, VM images, logs) and
has not written yet — read as zeros, as the kernel reads them.  dissect reads their blocks, which
hold whatever was there before (another file's deleted data): a restore wrote that in silence.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c
from dissect.util.stream import RunlistStream
from dissect.xfs import XFS
from dissect.xfs.c_xfs import c_xfs
from dissect.xfs.xfs import fsb_to_bb

from vmkeep.disks.errors import FileSystemError, FsDamagedError
from vmkeep.disks.fs.base import Node
from vmkeep.disks.fs.posix import PosixFileSystem

#: directory data block magics: v4 single-block and data, v5 (CRC) single-block and data
DATA_MAGICS = frozenset({c_xfs.XFS_DIR2_BLOCK_MAGIC, c_xfs.XFS_DIR2_DATA_MAGIC,
                         c_xfs.XFS_DIR3_BLOCK_MAGIC, c_xfs.XFS_DIR3_DATA_MAGIC})
#: the version-5 ones, whose header carries a CRC (xfs_dir3_blk_hdr: magic, crc, blkno, lsn,
#: uuid, owner)
V5_MAGICS = frozenset({c_xfs.XFS_DIR3_BLOCK_MAGIC, c_xfs.XFS_DIR3_DATA_MAGIC})
#: a short-form directory, inside the inode; the formats whose data lies in extents
LOCAL = int(c_xfs.xfs_dinode_fmt.XFS_DINODE_FMT_LOCAL)
MAPPED = frozenset({int(c_xfs.xfs_dinode_fmt.XFS_DINODE_FMT_EXTENTS),
                    int(c_xfs.xfs_dinode_fmt.XFS_DINODE_FMT_BTREE)})
#: where the CRC sits in a version-5 directory block and in a version-3 inode
DIR3_CRC, INODE_CRC = 4, 100


def crc_ok(data: bytes, at: int) -> bool:
    """Whether the little-endian CRC32C at ``at`` is the CRC of ``data`` with that field zeroed,
    as XFS computes every version-5 metadata checksum (superblock, AG headers, tree blocks,
    directory blocks, inodes)."""
    zeroed = data[:at] + bytes(4) + data[at + 4 :]
    return int(google_crc32c.value(zeroed)).to_bytes(4, "little") == data[at : at + 4]


def _crc_fault(data: bytes, at: int) -> str:
    """``"CRC mismatch"`` unless :func:`crc_ok`; else ``""``."""
    return "" if crc_ok(data, at) else "CRC mismatch"


class XfsFileSystem(PosixFileSystem):
    fstype = "xfs"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = XFS(fh)
            sb = self.fs.sb
            meta = int(sb.sb_features_incompat) & c_xfs.XFS_SB_FEAT_INCOMPAT_META_UUID
            self.uuid = bytes(sb.sb_meta_uuid if meta else sb.sb_uuid)  # what metadata carries

    def _stored_entries(self, node: Node) -> Iterator[tuple[str, Node]]:
        self._check_inode(node)
        if int(node.inode.di_format) != LOCAL:
            self._check_data_blocks(node)
        return super()._stored_entries(node)


    def _check_inode(self, node: Node) -> None:
        """A version-3 inode's CRC, number and UUID (see the module docstring), at each use
        (not remembered: a volume's walk would otherwise hold every inode number)."""
        if int(node.inode.di_version) < 3:
            return
        raw = node._buf.getvalue()  # what dissect parsed (kept by it when reading the inode)
        why = (_crc_fault(raw, INODE_CRC) or
               ("holds another inode number" if struct.unpack_from(">Q", raw, 152)[0] != node.inum
                else "belongs to another file system" if raw[160:176] != self.uuid else ""))
        if why:
            raise FsDamagedError(self.name, f"inode {node.inum}: {why}")

    def _check_data_blocks(self, node: Node) -> None:
        """Every mapped block of the directory's data segment is a directory data block."""
        if self.fs.sb.sb_dirblklog:
            raise FileSystemError(
                self.name, f"directory inode {node.inum}: directory blocks of "
                f"{self.fs.block_size << self.fs.sb.sb_dirblklog} bytes are not supported"
            )
        size, stream, block = int(node.size), node.open(), 0
        # its extents in order, none overlapping (checked: a crafted extent tree repeating a
        # subtree would otherwise yield its records again and again)
        for start, count in self._written_runs(node):  # (first block or None for a hole, count)
            for number in range(block, min(block + count, size // self.fs.block_size)):
                if start is None:
                    continue  # a hole: blocks whose entries were all removed
                stream.seek(number * self.fs.block_size)
                data = stream.read(self.fs.block_size)
                magic = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
                if magic not in DATA_MAGICS:
                    raise FsDamagedError(
                        self.name, f"directory inode {node.inum}: block {number} is not a "
                        "directory data block"
                    )
                if magic in V5_MAGICS:
                    daddr = (start + number - block) * (self.fs.block_size // 512)
                    why = (_crc_fault(data, DIR3_CRC) or
                           ("written for another address"
                            if struct.unpack_from(">Q", data, 8)[0] != daddr else
                            "belongs to another file system" if data[24:40] != self.uuid else
                            "belongs to another directory"
                            if struct.unpack_from(">Q", data, 40)[0] != node.inum else ""))
                    if why:
                        raise FsDamagedError(self.name, f"directory inode {node.inum}: "
                                                        f"block {number}: {why}")
            block += count

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        self._check_inode(node)
        if int(node.inode.di_format) not in MAPPED:
            return node.open()
        return RunlistStream(self.fs.fh, self._written_runs(node), int(node.size),
                             self.fs.block_size)

    def _written_runs(self, node: Node) -> list[tuple[int | None, int]]:
        """The file's ``(block or None, count)`` runs, as dissect's ``dataruns`` but with each
        unwritten extent a hole (see the module docstring)."""
        sb = self.fs.sb
        runs: list[tuple[int | None, int]] = []
        at = 0
        for offset, block, count, unwritten in node._iter_blocks():
            if offset < at:
                raise FsDamagedError(self.name, f"inode {node.inum}: its extents overlap")
            if offset > at:
                runs.append((None, offset - at))
            agno, agbno = fsb_to_bb(block, sb.sb_agblklog)
            runs.append((None if unwritten else agno * sb.sb_agblocks + agbno, count))
            at = offset + count
        blocks = -(-int(node.size) // self.fs.block_size)
        if at < blocks:
            runs.append((None, blocks - at))
        return runs

    def _mode(self, node: Node) -> int:
        return int(node.inode.di_mode)

    def _owner(self, node: Node) -> tuple[int, int]:
        return int(node.inode.di_uid), int(node.inode.di_gid)

    def _nlink(self, node: Node) -> int:
        ino = node.inode
        return int(ino.di_nlink or ino.di_onlink)
