"""XFS through :mod:`dissect.xfs` (registered as ``xfs``).

Contract: as :mod:`vmkeep.disks.fs.base`; ``inode`` is the absolute XFS inode number.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from dissect.xfs import XFS

from vmkeep.disks.fs.base import Entry, FileSystem, Node, type_of_mode


class XfsFileSystem(FileSystem):
    fstype = "xfs"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = XFS(fh)

    def _root(self) -> Node:
        return self.fs.root

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        for child in node.iterdir():
            if child.filename not in (".", ".."):
                yield child.filename, child

    def _type(self, node: Node) -> str:
        return type_of_mode(node.inode.di_mode)[0]

    def _entry(self, name: str, path: str, node: Node) -> Entry:
        ino = node.inode
        kind, sub = type_of_mode(ino.di_mode)
        return Entry(
            name=name,
            path=path,
            type=kind,
            size=node.size,
            mtime_ns=node.mtime_ns,
            mode=ino.di_mode,
            uid=ino.di_uid,
            gid=ino.di_gid,
            link=node.link if kind == "symlink" else None,
            inode=node.inum,
            nlink=ino.di_nlink or ino.di_onlink,
            kind=sub,
        )

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        return node.open()

    def _readlink(self, node: Node) -> str:
        return str(node.link)
