"""XFS through :mod:`dissect.xfs` (registered as ``xfs``).

Contract: as :mod:`vmkeep.disks.fs.base`; ``inode`` is the absolute XFS inode number.
"""

from __future__ import annotations

from typing import BinaryIO

from dissect.xfs import XFS

from vmkeep.disks.fs.base import Node
from vmkeep.disks.fs.posix import PosixFileSystem


class XfsFileSystem(PosixFileSystem):
    fstype = "xfs"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = XFS(fh)

    def _mode(self, node: Node) -> int:
        return int(node.inode.di_mode)

    def _owner(self, node: Node) -> tuple[int, int]:
        return int(node.inode.di_uid), int(node.inode.di_gid)

    def _nlink(self, node: Node) -> int:
        ino = node.inode
        return int(ino.di_nlink or ino.di_onlink)
