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
A block must be a tree block in form too (its level, item count and keys in order), and each
child one level below the parent that names it, its first key the parent's for it — Linux's
tree-checker rules, which dissect's cursor lacks: a crafted block naming itself as its child (its
checksum right) sent it down forever until memory ran out.  Guest disks are untrusted; this
module wraps dissect's ``Cursor.push`` (in this process) to check each step down.  A volume
label that is not UTF-8 (btrfs-progs accepts one) is shown with U+FFFD for its bad bytes instead
of failing the whole volume.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from itertools import pairwise
from typing import BinaryIO

import google_crc32c
from dissect.btrfs import Btrfs
from dissect.btrfs.c_btrfs import BTRFS_BLOCK_GROUP, c_btrfs
from dissect.btrfs.stream import Chunk
from dissect.btrfs.tree import Cursor

from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs.base import Node
from vmkeep.disks.fs.btrfs_mounts import guest_layout
from vmkeep.disks.fs.posix import PosixFileSystem

CSUM_SIZE = 32  # the checksum field at the start of every tree block
#: the tree block header's size and the offsets of its item count and level; a key's bytes
HEADER, NRITEMS_AT, LEVEL_AT, KEY_BYTES = 101, 96, 100, 17
MAX_LEVEL = 7  # BTRFS_MAX_LEVEL - 1
#: a leaf's items and a node's key pointers, read for their keys (objectid, type, offset)
_ITEM, _KEY_PTR = struct.Struct("<QBQ8x"), struct.Struct("<QBQ16x")
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


#: where the superblock keeps the volume label (256 bytes, NUL-padded)
LABEL_AT = c_btrfs.BTRFS_SUPER_INFO_OFFSET + c_btrfs.btrfs_super_block.fields["label"].offset
LABEL_SIZE = c_btrfs.BTRFS_LABEL_SIZE


class _LabelShownAsText:
    """``fh`` with its superblock's label made UTF-8 (undecodable bytes as U+FFFD): dissect
    decodes the label strictly while it opens the volume, so ``mkfs.btrfs -L $'lab\\xff'``
    made the whole volume unreadable.  Only the label's bytes differ; used only for such a
    volume."""

    def __init__(self, fh: BinaryIO, label: bytes) -> None:
        self._fh, self._pos = fh, 0
        text = label.decode(errors="replace").encode()[: LABEL_SIZE - 1]
        self._label = text.decode(errors="ignore").encode().ljust(LABEL_SIZE, b"\0")

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._fh.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        self._fh.seek(self._pos)
        data = self._fh.read(size)
        start, end = self._pos, self._pos + len(data)
        self._pos = end
        if start < LABEL_AT + LABEL_SIZE and end > LABEL_AT:
            first, last = max(start, LABEL_AT), min(end, LABEL_AT + LABEL_SIZE)
            data = (data[: first - start] + self._label[first - LABEL_AT : last - LABEL_AT]
                    + data[last - start :])
        return data


def _with_readable_label(fh: BinaryIO) -> BinaryIO:
    """``fh``, or :class:`_LabelShownAsText` over it when its label is not UTF-8."""
    fh.seek(LABEL_AT)
    label = fh.read(LABEL_SIZE).split(b"\0")[0]
    try:
        label.decode()
    except UnicodeDecodeError:
        return _LabelShownAsText(fh, label)  # type: ignore[return-value]
    return fh


class CheckedBtrfs(Btrfs):
    """dissect's Btrfs with every tree block checked (see the module docstring); also the
    reader of :mod:`vmkeep.disks.btrfs_free`."""

    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.vmkeep_name = name  # before dissect's constructor, which reads the first blocks
        super().__init__(_with_readable_label(fh))

    def _read_node(self, address: int) -> bytes:
        return self._checked(address, structure=True)

    def _checked(self, address: int, structure: bool) -> bytes:
        """The block at ``address``, checked (``structure``: its items too), from a good copy."""
        data = super()._read_node(address)
        why = self._fault(address, data, structure)
        if why is None:
            return data
        for copy in self._copies(address):
            if self._fault(address, copy, structure) is None:
                return copy
        raise FsDamagedError(self.vmkeep_name, f"tree block at {address:#x}: {why}")

    def tree_block(self, address: int) -> bytes:
        """The tree block at logical ``address``, its header checked (``FsDamagedError`` if no
        copy is good); its items are the caller's to check (:mod:`vmkeep.disks.btrfs_free`
        checks the order of every key of a whole tree)."""
        return self._checked(address, structure=False)

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

    def _fault(self, address: int, block: bytes, structure: bool) -> str | None:
        """Why ``block`` is not the tree block at ``address``, or ``None`` (``structure``: its
        level, item count and key order checked too)."""
        if len(block) != self.node_size:
            return "truncated"
        csum = checksum(int(self.sb.csum_type), memoryview(block)[CSUM_SIZE:])
        if block[: len(csum)] != csum:
            return "checksum mismatch"
        if int.from_bytes(block[48:56], "little") != address:
            return "written for another address"
        if block[32:48] not in (bytes(self.sb.fsid), bytes(self.sb.metadata_uuid)):
            return "belongs to another file system"
        return _structure_fault(block) if structure else None

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


def _structure_fault(block: bytes) -> str | None:
    """Why a tree block's layout is not one (Linux's tree-checker rules), or ``None``: a level
    above :data:`MAX_LEVEL`, more items than fit, keys not strictly ascending."""
    level, nritems = block[LEVEL_AT], int.from_bytes(block[NRITEMS_AT:NRITEMS_AT + 4], "little")
    if level > MAX_LEVEL:
        return f"level {level}"
    entry = _KEY_PTR if level else _ITEM
    if HEADER + nritems * entry.size > len(block) or (level and not nritems):
        return f"{nritems} items at level {level}"
    keys = list(entry.iter_unpack(block[HEADER:HEADER + nritems * entry.size]))
    if any(a >= b for a, b in pairwise(keys)):
        return "keys out of order"
    return None


def _checked_push(self: Cursor, address: int, initial_index: int = 0) -> None:
    """dissect's :meth:`Cursor.push`, refusing a child that is not one level below its parent or
    whose first key is not the parent's key for it (Linux's rules: without them a block naming
    itself, or an ancestor, as its child sends the cursor down forever, its path growing until
    memory runs out)."""
    parent, index = self._node, self._index
    _dissect_push(self, address, initial_index)
    if parent is None:
        return
    child = self._node
    at = HEADER + index * _KEY_PTR.size
    if child[LEVEL_AT] != parent[LEVEL_AT] - 1 or bytes(child[HEADER:HEADER + KEY_BYTES]) != bytes(
            parent[at:at + KEY_BYTES]):
        self.pop()
        name = getattr(self.btree.btrfs, "vmkeep_name", "btrfs")
        raise FsDamagedError(name, f"tree block at {address:#x}: not the child its parent "
                                   f"names (level {child[LEVEL_AT]} under {parent[LEVEL_AT]}, "
                                   "or another first key)")


_dissect_push = Cursor.push
Cursor.push = _checked_push  # dissect lacks these checks (module docstring)


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
