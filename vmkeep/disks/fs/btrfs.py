"""Btrfs through :mod:`dissect.btrfs` (registered as ``btrfs``).

Contract: as :mod:`vmkeep.disks.fs.base`, showing the default subvolume; other subvolumes appear
as the directories they are mounted on.  ``inode`` combines the subvolume id and inode number.
Compressed extents are read if dissect has the codec (zlib, zstd via python-zstandard; LZO needs
python-lzo, not installed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from dissect.btrfs import Btrfs

from vmkeep.disks.fs.base import Node
from vmkeep.disks.fs.posix import PosixFileSystem


class BtrfsFileSystem(PosixFileSystem):
    fstype = "btrfs"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = Btrfs(fh)

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        for child_name, child in node.iterdir():  # (name, node) pairs, unlike ext and XFS
            if child_name not in (".", ".."):
                yield child_name, child

    def _mode(self, node: Node) -> int:
        return int(node.mode)

    def _owner(self, node: Node) -> tuple[int, int]:
        return int(node.uid), int(node.gid)

    def _nlink(self, node: Node) -> int:
        return int(node.inode.nlink)

    def _inode(self, node: Node) -> int:
        return (node.subvolume.objectid << 64) | node.inum
