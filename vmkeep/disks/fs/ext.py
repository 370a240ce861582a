"""ext2/3/4 through :mod:`dissect.extfs` (registered as ``ext``).

Contract: as :mod:`vmkeep.disks.fs.base`; ``inode`` is the ext inode number; uid/gid include the
high 16 bits; device nodes, fifos and sockets are ``other`` entries that cannot be opened.

Damaged directories: as :mod:`vmkeep.disks.fs.posix`; directories stored inline in the inode
(the rare ``inline_data`` feature) are not checked.
"""

from __future__ import annotations

from typing import BinaryIO

from dissect.extfs import ExtFS

from vmkeep.disks.fs.base import Node
from vmkeep.disks.fs.posix import PosixFileSystem

#: ``EXT4_INLINE_DATA_FL``: the inode holds its data (a directory's entries) itself
INLINE_DATA = 0x10000000


class ExtFileSystem(PosixFileSystem):
    fstype = "ext"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = ExtFS(fh)

    def _dots_stored(self, node: Node) -> bool:
        return not node.inode.i_flags & INLINE_DATA

    def _mode(self, node: Node) -> int:
        return int(node.inode.i_mode)

    def _owner(self, node: Node) -> tuple[int, int]:
        ino = node.inode
        return ino.i_uid | (ino.i_uid_high << 16), ino.i_gid | (ino.i_gid_high << 16)

    def _nlink(self, node: Node) -> int:
        return int(node.inode.i_links_count)
