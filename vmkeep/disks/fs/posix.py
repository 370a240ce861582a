"""The shared driver of dissect's POSIX file systems (ext, XFS, Btrfs): one ``root``, directory
nodes whose ``iterdir()`` yields child nodes, a ``mode`` that says the type, ``open()`` and
``link`` on the node.

Contract: as :mod:`vmkeep.disks.fs.base`.  A driver sets ``self.fs`` (the dissect file system)
and says where its inode keeps the mode, owner and link count (:meth:`_mode`, :meth:`_owner`,
:meth:`_nlink`); ``inode`` is ``node.inum`` unless :meth:`_inode` says otherwise.

A directory whose entries do not begin with its ``.`` entry is damaged: ext and XFS store ``.``
and ``..`` first in a directory's first block (hashed and multi-block directories included), and
dissect's parsers skip what they cannot read in silence (XFS: a block without a directory magic
is taken for a hole), so a directory block overwritten by other data would list as empty.
Listing it raises :class:`~vmkeep.disks.errors.FsDamagedError` instead (a restore reports it
as a ``read-error``).  A driver whose directories may not store ``.`` (ext's ``inline_data``)
says so in :meth:`_dots_stored`.  ext and XFS also check every further block of a directory
(their :meth:`_stored_entries`: :mod:`.ext`, :mod:`.xfs`); Btrfs only the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs.base import Entry, FileSystem, Node, type_of_mode


class PosixFileSystem(FileSystem):
    """A dissect file system with POSIX inodes (see the module docstring)."""

    fs: Any

    # -- where a driver's inode keeps its fields ----------------------------------------------
    def _mode(self, node: Node) -> int:
        raise NotImplementedError

    def _owner(self, node: Node) -> tuple[int, int]:
        raise NotImplementedError

    def _nlink(self, node: Node) -> int:
        raise NotImplementedError

    def _inode(self, node: Node) -> int:
        return int(node.inum)

    def _dots_stored(self, node: Node) -> bool:
        """Whether the directory ``node`` stores its ``.`` entry first (see the module doc)."""
        return True

    def _check_inode(self, node: Node) -> None:
        """A driver's check of an inode against its own checksum, before its data or link is
        used (``FsDamagedError``); drivers that read a directory check its inode in their
        ``_stored_entries``.  Default: none (file systems without inode checksums)."""

    def _stored_entries(self, node: Node) -> Iterator[tuple[str, Node]]:
        """``(name, node)`` of every entry of directory ``node``, ``.`` and ``..`` included, in
        stored order: dissect's reader unless a driver reads (and checks) them itself."""
        return ((child.filename, child) for child in node.iterdir())

    # -- the driver hooks of FileSystem ---------------------------------------------------------
    def _root(self) -> Node:
        return self.fs.root

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        children = self._stored_entries(node)
        if self._dots_stored(node):
            first = next(children, None)
            if first is None or first[0] != ".":
                raise FsDamagedError(
                    self.name, f"directory inode {node.inum} does not begin with its '.' entry"
                )
        for name, child in children:
            if name not in (".", ".."):
                yield name, child

    def _type(self, node: Node) -> str:
        return type_of_mode(self._mode(node))[0]

    def _entry(self, name: str, path: str, node: Node) -> Entry:
        mode = self._mode(node)
        kind, sub = type_of_mode(mode)
        uid, gid = self._owner(node)
        return Entry(
            name=name,
            path=path,
            type=kind,
            size=node.size,
            mtime_ns=node.mtime_ns,
            mode=mode,
            uid=uid,
            gid=gid,
            link=node.link if kind == "symlink" else None,
            inode=self._inode(node),
            nlink=self._nlink(node),
            kind=sub,
            elsewhere=self._elsewhere(node) if kind == "file" else "",
        )

    def _elsewhere(self, node: Node) -> str:
        """Why file ``node``'s content cannot be read from the volume (module docstring of
        :mod:`vmkeep.disks.fs.base`: ``Entry.elsewhere``), else ``""``."""
        return ""

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        self._check_inode(node)
        return node.open()

    def _readlink(self, node: Node) -> str:
        self._check_inode(node)
        return str(node.link)
