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

from vmkeep.disks.fs.base import Entry, FileSystem, Node, type_of_mode


class BtrfsFileSystem(FileSystem):
    fstype = "btrfs"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = Btrfs(fh)

    def _root(self) -> Node:
        return self.fs.root

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        for child_name, child in node.iterdir():
            if child_name not in (".", ".."):
                yield child_name, child

    def _type(self, node: Node) -> str:
        return type_of_mode(node.mode)[0]

    def _entry(self, name: str, path: str, node: Node) -> Entry:
        kind, sub = type_of_mode(node.mode)
        return Entry(
            name=name,
            path=path,
            type=kind,
            size=node.size,
            mtime_ns=node.mtime_ns,
            mode=node.mode,
            uid=node.uid,
            gid=node.gid,
            link=node.link if kind == "symlink" else None,
            inode=(node.subvolume.objectid << 64) | node.inum,
            nlink=node.inode.nlink,
            kind=sub,
        )

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        return node.open()

    def _readlink(self, node: Node) -> str:
        return str(node.link)
