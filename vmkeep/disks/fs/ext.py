"""ext2/3/4 through :mod:`dissect.extfs` (registered as ``ext``).

Contract: as :mod:`vmkeep.disks.fs.base`; ``inode`` is the ext inode number; uid/gid include the
high 16 bits; device nodes, fifos and sockets are ``other`` entries that cannot be opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from dissect.extfs import ExtFS

from vmkeep.disks.fs.base import Entry, FileSystem, Node, type_of_mode


class ExtFileSystem(FileSystem):
    fstype = "ext"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = ExtFS(fh)

    def _root(self) -> Node:
        return self.fs.root

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        for child in node.iterdir():
            if child.filename not in (".", ".."):
                yield child.filename, child

    def _type(self, node: Node) -> str:
        return type_of_mode(node.inode.i_mode)[0]

    def _entry(self, name: str, path: str, node: Node) -> Entry:
        ino = node.inode
        kind, sub = type_of_mode(ino.i_mode)
        return Entry(
            name=name,
            path=path,
            type=kind,
            size=node.size,
            mtime_ns=node.mtime_ns,
            mode=ino.i_mode,
            uid=ino.i_uid | (ino.i_uid_high << 16),
            gid=ino.i_gid | (ino.i_gid_high << 16),
            link=node.link if kind == "symlink" else None,
            inode=node.inum,
            nlink=ino.i_links_count,
            kind=sub,
        )

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        return node.open()

    def _readlink(self, node: Node) -> str:
        return str(node.link)
