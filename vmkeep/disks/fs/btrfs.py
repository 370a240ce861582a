"""Btrfs through :mod:`dissect.btrfs` (registered as ``btrfs``).

Contract: as :mod:`vmkeep.disks.fs.base`, showing the volume as its guest mounts it — the
subvolume its ``/etc/fstab`` mounts at ``/``, with the subvolumes it mounts on directories
(``/home``, ``/var``…) in their place (:mod:`vmkeep.disks.fs.btrfs_mounts`; without such an
fstab, the default subvolume); subvolumes nested in what is shown appear as their directories.
``inode`` combines the subvolume id and inode number.
Compressed extents are read — zlib, LZO (dissect.util's decoder) and zstd (``backports.zstd``,
which ``dissect.btrfs[full]`` brings: Fedora mounts Btrfs with ``compress=zstd:1`` by default).

Every tree block is checked before dissect parses it, as the kernel does: its checksum (the
superblock's ``csum_type``: crc32c, xxhash64, sha256 or blake2b), its own logical address and the
file system's id.  A block that fails is read from the other copies of its chunk (``DUP`` — the
default for metadata on one device — and ``RAID1``/``RAID1C3``/``RAID1C4``), as btrfs itself
would; with no good copy it is :class:`~vmkeep.disks.errors.FsDamagedError` (a damaged directory
leaf: that directory; the root tree: the volume), never a block of other bytes parsed as metadata.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c
from dissect.btrfs import Btrfs
from dissect.btrfs.c_btrfs import BTRFS_BLOCK_GROUP, c_btrfs
from dissect.btrfs.stream import Chunk

from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs.base import Node
from vmkeep.disks.fs.btrfs_mounts import guest_layout
from vmkeep.disks.fs.posix import PosixFileSystem

CSUM_SIZE = 32  # the checksum field at the start of every tree block
ROOT_ITEM_KEY, ROOT_BACKREF_KEY = 132, 144
_MIRRORED = BTRFS_BLOCK_GROUP.DUP | BTRFS_BLOCK_GROUP.RAID1 | BTRFS_BLOCK_GROUP.RAID1C3 | (
    BTRFS_BLOCK_GROUP.RAID1C4)


def checksum(csum_type: int, data: bytes | memoryview) -> bytes:
    """The checksum of ``data`` (a tree block or superblock after its checksum field), as
    stored; ``ValueError`` for a checksum type this reader does not know."""
    if csum_type == 0:
        return int(google_crc32c.value(bytes(data))).to_bytes(4, "little")
    if csum_type == 1:
        import xxhash

        return xxhash.xxh64_intdigest(data).to_bytes(8, "little")
    if csum_type == 2:
        return hashlib.sha256(data).digest()
    if csum_type == 3:
        return hashlib.blake2b(data, digest_size=32).digest()
    raise ValueError(f"unknown checksum type {csum_type}")


class CheckedBtrfs(Btrfs):
    """dissect's Btrfs with every tree block checked (see the module docstring); also the
    reader of :mod:`vmkeep.disks.btrfs_free`."""

    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.vmkeep_name = name  # before dissect's constructor, which reads the first blocks
        super().__init__(fh)

    def _read_node(self, address: int) -> bytes:
        data = super()._read_node(address)
        why = self._fault(address, data)
        if why is None:
            return data
        for copy in self._copies(address):
            if self._fault(address, copy) is None:
                return copy
        raise FsDamagedError(self.vmkeep_name, f"tree block at {address:#x}: {why}")

    def tree_block(self, address: int) -> bytes:
        """The checked tree block at logical ``address`` (``FsDamagedError`` if no copy is
        good)."""
        return self._read_node(address)

    def tree_root(self, objectid: int) -> tuple[int, int]:
        """``(logical address, level)`` of the root of tree ``objectid``, from the root tree's
        ``ROOT_ITEM`` (``KeyError`` if the file system has no such tree)."""
        item = c_btrfs.btrfs_root_item(self._root_tree.find(objectid, ROOT_ITEM_KEY)[1])
        return int(item.bytenr), int(item.level)

    def subvolume_parent(self, objectid: int) -> int:
        """The id of the subvolume that holds subvolume ``objectid`` (its ``ROOT_BACKREF``;
        ``KeyError`` for the top level, which none holds)."""
        item, _data = self._root_tree.find(objectid=objectid, type=ROOT_BACKREF_KEY)
        return int(item.key.offset)

    def chunk_map(self) -> list[Chunk]:
        """Every chunk: its logical range, type (profile) and stripes."""
        return list(self._logical_fh.chunks)

    def _fault(self, address: int, block: bytes) -> str | None:
        """Why ``block`` is not the tree block at ``address``, or ``None``."""
        if len(block) != self.node_size:
            return "truncated"
        csum = checksum(int(self.sb.csum_type), memoryview(block)[CSUM_SIZE:])
        if block[: len(csum)] != csum:
            return "checksum mismatch"
        if int.from_bytes(block[48:56], "little") != address:
            return "written for another address"
        if block[32:48] not in (bytes(self.sb.fsid), bytes(self.sb.metadata_uuid)):
            return "belongs to another file system"
        return None

    def _copies(self, address: int) -> list[bytes]:
        """The block at ``address`` as each mirror of its chunk holds it (none if unmirrored)."""
        stream = self._logical_fh
        for chunk in stream.chunks:
            if chunk.offset <= address < chunk.offset + chunk.length:
                if not chunk.type & _MIRRORED:
                    return []
                out = []
                for stripe in chunk.stripes:
                    if stripe.fh is not None:
                        stripe.fh.seek(stripe.offset + address - chunk.offset)
                        out.append(stripe.fh.read(self.node_size))
                return out
        return []


class BtrfsFileSystem(PosixFileSystem):
    fstype = "btrfs"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = CheckedBtrfs(fh, name)
            self.layout = guest_layout(self.fs)

    def _root(self) -> Node:
        return self.layout.root.root

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        mounted = self.layout.mounted
        for child_name, child in node.iterdir():  # (name, node) pairs, unlike ext and XFS
            if child_name not in (".", ".."):
                yield child_name, mounted.get((child.subvolume.objectid, child.inum), child)

    def _mode(self, node: Node) -> int:
        return int(node.mode)

    def _owner(self, node: Node) -> tuple[int, int]:
        return int(node.uid), int(node.gid)

    def _nlink(self, node: Node) -> int:
        return int(node.inode.nlink)

    def _inode(self, node: Node) -> int:
        return (node.subvolume.objectid << 64) | node.inum
