"""The free space of a Btrfs volume, from its extent tree — only when the volume vouches for it
(part of :mod:`vmkeep.disks.deleted_blocks`, which owns the contract for callers).

Btrfs is the root file system of SUSE Linux Enterprise Server and openSUSE and the default of
Fedora.  It keeps no allocation bitmap: a *chunk* maps a range of the file system's logical
address space onto the device (twice for ``DUP``, the default for metadata), its *block group*
item counts the bytes used in it, and the *extent tree* holds an item for every extent in use —
data extents and tree blocks alike.  What is free on the device is therefore

- in each block group, the logical ranges no extent item covers, on every stripe of its chunk;
- the device bytes no chunk uses (a chunk emptied and removed leaves its old data there),

less the first MiB (never allocated: boot loaders live there) and the superblock and its
mirrors (64 KiB, 64 MiB, 256 GiB, 1 PiB: written by Btrfs at every commit, inside block groups
too).

:func:`free_runs` returns those volume ``(offset, length)`` runs of at least ``min_bytes`` — or,
as a string, why they are not trusted.  Guest disks are untrusted and a wrong run loses data, so
the volume is searched only when all of this holds:

- **the superblock**: its checksum (``csum_type``: crc32c, xxhash64, sha256 or blake2b) and
  where it says it is; no error flag and no other flag than "written" (seeding, a metadata dump,
  a conversion half done by ``btrfstune``); one device; not zoned, no extent tree v2 and no RAID
  stripe tree (their allocation is elsewhere);
- **nothing committed later than the trees**: no *log tree* (``log_root`` 0).  Btrfs writes an
  ``fsync`` into the log tree and replays it at the next mount, with extents the extent tree does
  not hold yet; a commit — which freezing the file system (``FIFREEZE``, VMware Tools'
  quiescing) and a clean unmount both do — empties it.  Everything else is copy-on-write: what
  was written since the last commit is not reachable from the committed trees and would be lost
  by a crash as much as by this;
- **every tree block checked** (:class:`vmkeep.disks.fs.btrfs.CheckedBtrfs`: checksum, own
  address, file system id; the other ``DUP`` copy when one fails), each child one level below
  its parent, keys strictly ascending through each tree;
- **the trees agree with each other**: chunks single or ``DUP`` on the one device, not
  overlapping in the logical address space, their stripes inside the device
  (``dev_item.total_bytes``, itself inside the volume), not overlapping, and exactly the device
  tree's ``DEV_EXTENT`` items; one block group per chunk, same range and type; extents sorted,
  not overlapping, each inside a block group, and in each block group adding up to its ``used``
  count; and when the volume has a valid free-space tree (mkfs's default since btrfs-progs
  5.15), its free space in each block group is the same as the extent tree's (the superblock
  mirrors aside, which it may or may not list).

What a restore then lacks: the trees of earlier commits that the superblock keeps as *backup
roots* (``mount -o rescue=usebackuproot``) lie in space the committed trees call free, so on the
restored volume they hold zeros; the committed trees are whole.

The caller's read budget bounds what is read (the extent tree of a volume with many million
extents is more than it holds: the volume is then read as usual).  Profiles other than single
and ``DUP`` (a volume spanning devices) are not searched.  Raises nothing of its own for bad
guest data beyond what the caller catches (any exception means "read as usual").
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from vmkeep.disks.fs.btrfs import HEADER, LEVEL_AT, MAX_LEVEL, NRITEMS_AT, CheckedBtrfs, checksum
from vmkeep.disks.volumes import Volume

MiB = 1 << 20
SUPER_OFFSET, SUPER_SIZE = 64 << 10, 4096
#: where the superblock and its mirrors are (bytes on the device), each SUPER_SIZE long
SUPER_MIRRORS = (SUPER_OFFSET, 64 * MiB, 256 << 30, 1 << 50)
#: the device bytes Btrfs never allocates (boot loaders)
RESERVED = MiB
MAGIC = b"_BHRfS_M"
#: superblock flags: written; the file system had errors; everything else (seeding, metadata
#: dumps, conversions in progress) is not searched
SUPER_FLAG_WRITTEN = 1
SUPER_FLAG_ERROR = 1 << 2
#: incompatible features whose allocation this module does not read
INCOMPAT_REFUSED = {1 << 12: "zoned", 1 << 13: "extent tree v2", 1 << 14: "a RAID stripe tree"}
#: read-only-compatible features: free-space tree, it is valid, block-group tree
COMPAT_RO_FST, COMPAT_RO_FST_VALID, COMPAT_RO_BG_TREE = 1, 2, 8
#: tree ids
EXTENT_TREE, DEV_TREE, FREE_SPACE_TREE, BLOCK_GROUP_TREE = 2, 4, 10, 11
#: item key types
EXTENT_ITEM, METADATA_ITEM, BLOCK_GROUP_ITEM, DEV_EXTENT = 168, 169, 192, 204
FREE_SPACE_INFO, FREE_SPACE_EXTENT, FREE_SPACE_BITMAP = 198, 199, 200
FREE_SPACE_USING_BITMAPS = 1
#: block group type bits: data/system/metadata, and the profiles
BG_TYPES = 0x7
BG_DUP = 1 << 5
BG_PROFILES = 0x7F8
#: leaf item and key pointer layouts (the tree block header's are fs/btrfs.py's)
ITEM = struct.Struct("<QBQII")
KEY_PTR = struct.Struct("<QBQQQ")


class _NotTrusted(Exception):
    """Why the extent tree is not trusted (its message is the note)."""


@dataclass(frozen=True)
class _Super:
    csum_type: int
    nodesize: int
    sectorsize: int
    devid: int
    device_bytes: int
    compat_ro: int


def free_runs(vol: Volume, min_bytes: int) -> list[tuple[int, int]] | str:
    """Volume ``(offset, length)`` runs of free space, or why the extent tree is not trusted
    (see the module docstring)."""
    fh = vol.open()
    try:
        fh.seek(SUPER_OFFSET)
        sb = _superblock(fh.read(SUPER_SIZE), vol.size)
        fs = CheckedBtrfs(fh, vol.name)
        runs = _free(fs, sb)
    except _NotTrusted as why:
        return str(why)
    return [(o, n) for o, n in runs if n >= min_bytes]


# -- superblock ------------------------------------------------------------------------------
def _superblock(raw: bytes, volume_bytes: int) -> _Super:
    if len(raw) != SUPER_SIZE or raw[64:72] != MAGIC:
        raise _NotTrusted("no Btrfs superblock")
    (csum_type,) = struct.unpack_from("<H", raw, 0xC4)
    try:
        good = raw[:32].startswith(checksum(csum_type, raw[32:]))
    except ValueError:
        good = False
    if not good or int.from_bytes(raw[48:56], "little") != SUPER_OFFSET:
        raise _NotTrusted("its superblock fails its checks")
    flags, log_root = (int.from_bytes(raw[o:o + 8], "little") for o in (56, 0x60))
    if flags & SUPER_FLAG_ERROR:
        raise _NotTrusted("marked as having had errors (btrfs check first)")
    if flags & ~SUPER_FLAG_WRITTEN:
        raise _NotTrusted(f"superblock flags {flags:#x} (a seed device, a metadata dump or a "
                          "conversion in progress: not searched)")
    compat_ro, incompat = struct.unpack_from("<QQ", raw, 0xB4)
    for bit, name in INCOMPAT_REFUSED.items():
        if incompat & bit:
            raise _NotTrusted(f"{name} (not searched)")
    (devices,) = struct.unpack_from("<Q", raw, 0x88)
    if devices != 1:
        raise _NotTrusted(f"spans {devices} devices (not searched)")
    if log_root:
        raise _NotTrusted("its log tree holds fsynced changes not yet committed (neither frozen "
                          "nor cleanly unmounted)")
    sectorsize, nodesize = struct.unpack_from("<II", raw, 0x90)
    devid, device_bytes = struct.unpack_from("<QQ", raw, 0xC9)
    if device_bytes > volume_bytes:
        raise _NotTrusted(f"its device ({device_bytes} bytes) is larger than the volume")
    return _Super(csum_type, nodesize, sectorsize, devid, device_bytes, compat_ro)


# -- trees -----------------------------------------------------------------------------------
def _items(fs: CheckedBtrfs, tree: int) -> Iterator[tuple[int, int, int, bytes]]:
    """Every leaf item ``(objectid, type, offset, data)`` of tree ``tree`` in key order; each
    block checked, each child one level below its parent, keys strictly ascending."""
    try:
        root, level = fs.tree_root(tree)
    except KeyError:
        raise _NotTrusted(f"it has no tree {tree}") from None
    last: tuple[int, int, int] | None = None
    stack = [(root, level)]
    while stack:
        address, want = stack.pop()
        block = fs.tree_block(address)
        nritems, got = int.from_bytes(block[NRITEMS_AT:NRITEMS_AT + 4], "little"), block[LEVEL_AT]
        if got != want or got > MAX_LEVEL:
            raise _NotTrusted(f"tree block at {address}: level {got}, its parent says {want}")
        if got:
            if HEADER + nritems * KEY_PTR.size > len(block):
                raise _NotTrusted(f"tree block at {address}: {nritems} pointers do not fit")
            children = [KEY_PTR.unpack_from(block, HEADER + i * KEY_PTR.size)[3]
                        for i in range(nritems)]
            stack.extend((child, got - 1) for child in reversed(children))
            continue
        if HEADER + nritems * ITEM.size > len(block):
            raise _NotTrusted(f"tree block at {address}: {nritems} items do not fit")
        for i in range(nritems):
            objectid, kind, offset, at, size = ITEM.unpack_from(block, HEADER + i * ITEM.size)
            key = (objectid, kind, offset)
            if last is not None and key <= last:
                raise _NotTrusted(f"tree {tree}: keys out of order at {key}")
            if HEADER + at + size > len(block):
                raise _NotTrusted(f"tree block at {address}: an item lies outside it")
            last = key
            yield objectid, kind, offset, block[HEADER + at:HEADER + at + size]


@dataclass(frozen=True)
class _Group:
    start: int
    length: int
    used: int
    kind: int


def _free(fs: CheckedBtrfs, sb: _Super) -> list[tuple[int, int]]:
    chunks = _chunks(fs, sb)
    groups, free_logical = _extent_gaps(fs, sb, chunks)
    if sb.compat_ro & COMPAT_RO_FST and sb.compat_ro & COMPAT_RO_FST_VALID:
        _same_as_free_space_tree(fs, sb, groups, free_logical, chunks)
    physical: list[tuple[int, int]] = []
    for group in groups:
        stripes = chunks[group.start][2]
        for start, length in free_logical[group.start]:
            physical.extend((device + start - group.start, length) for device in stripes)
    physical.extend(_unallocated(sb, chunks))
    keep_out = [(0, RESERVED)] + [(m, SUPER_SIZE) for m in SUPER_MIRRORS]
    return _subtract(_merged(sorted(physical)), keep_out)


def _chunks(fs: CheckedBtrfs, sb: _Super) -> dict[int, tuple[int, int, list[int]]]:
    """``{logical start: (length, type, [device offset of each stripe])}``, checked against the
    device tree."""
    out: dict[int, tuple[int, int, list[int]]] = {}
    stripes: list[tuple[int, int]] = []
    for chunk in fs.chunk_map():
        kind = int(chunk.type)
        if kind & BG_PROFILES & ~BG_DUP:
            raise _NotTrusted("chunks with a RAID profile (not searched)")
        want = 2 if kind & BG_DUP else 1
        if len(chunk.stripes) != want or any(s.devid != sb.devid for s in chunk.stripes):
            raise _NotTrusted(f"chunk at {chunk.offset}: stripes not on its one device")
        out[int(chunk.offset)] = (int(chunk.length), kind, [int(s.offset) for s in chunk.stripes])
        stripes.extend((int(s.offset), int(chunk.length)) for s in chunk.stripes)
    logical = sorted((start, length) for start, (length, _k, _s) in out.items())
    if len(logical) != len(fs.chunk_map()) or any(
            a + n > b for (a, n), (b, _m) in pairwise(logical)):
        raise _NotTrusted("chunks overlap in the logical address space")
    stripes.sort()
    for (a, n), (b, _m) in pairwise(stripes):
        if a + n > b:
            raise _NotTrusted(f"chunk stripes overlap at device offset {b}")
    if stripes and (stripes[0][0] < RESERVED or sum(stripes[-1]) > sb.device_bytes):
        raise _NotTrusted("a chunk lies outside its device")
    extents = sorted((offset, int.from_bytes(data[24:32], "little"))
                     for objectid, kind, offset, data in _items(fs, DEV_TREE)
                     if kind == DEV_EXTENT and objectid == sb.devid)
    if extents != stripes:
        raise _NotTrusted("its device tree and chunk tree disagree")
    return out


def _extent_gaps(fs: CheckedBtrfs, sb: _Super, chunks: dict[int, tuple[int, int, list[int]]]
                 ) -> tuple[list[_Group], dict[int, list[tuple[int, int]]]]:
    """The block groups, and per block group the logical ``(start, length)`` ranges no extent
    item covers — in one walk of the extent tree, which holds the block-group items too unless
    the volume has a block-group tree.  Each chunk's range is its block group's (checked: one
    block group per chunk, the extents in each adding up to its ``used`` count)."""
    in_extent_tree = not sb.compat_ro & COMPAT_RO_BG_TREE
    spans = iter(sorted((start, length) for start, (length, _k, _s) in chunks.items()))
    gaps: dict[int, list[tuple[int, int]]] = {start: [] for start in chunks}
    used: dict[int, int] = dict.fromkeys(chunks, 0)
    groups: list[_Group] = []
    span = next(spans, None)
    at = span[0] if span else 0
    for objectid, kind, offset, data in _items(fs, EXTENT_TREE):
        if kind == BLOCK_GROUP_ITEM and in_extent_tree:
            groups.append(_group(objectid, offset, data))
            continue
        if kind not in (EXTENT_ITEM, METADATA_ITEM):
            continue
        length = sb.nodesize if kind == METADATA_ITEM else offset
        while span is not None and objectid >= sum(span):
            if sum(span) > at:
                gaps[span[0]].append((at, sum(span) - at))
            span = next(spans, None)
            at = span[0] if span else 0
        if span is None or objectid < at or objectid + length > sum(span):
            raise _NotTrusted(f"extent at {objectid} lies outside its block group or overlaps")
        if objectid > at:
            gaps[span[0]].append((at, objectid - at))
        at, used[span[0]] = objectid + length, used[span[0]] + length
    while span is not None:
        if sum(span) > at:
            gaps[span[0]].append((at, sum(span) - at))
        span = next(spans, None)
        at = span[0] if span else 0
    if not in_extent_tree:
        groups = [_group(objectid, offset, data)
                  for objectid, kind, offset, data in _items(fs, BLOCK_GROUP_TREE)
                  if kind == BLOCK_GROUP_ITEM]
    if sorted((g.start, g.length, g.kind) for g in groups) != sorted(
            (start, length, kind) for start, (length, kind, _s) in chunks.items()):
        raise _NotTrusted("its block groups and chunks disagree")
    for group in groups:
        if used[group.start] != group.used:
            raise _NotTrusted(f"block group at {group.start}: {used[group.start]} bytes in "
                              f"extents, {group.used} in its item")
    return groups, gaps


def _group(objectid: int, offset: int, data: bytes) -> _Group:
    used, _chunk_objectid, flags = struct.unpack_from("<QQQ", data)
    return _Group(objectid, offset, used, flags)


def _same_as_free_space_tree(fs: CheckedBtrfs, sb: _Super, groups: list[_Group],
                             free: dict[int, list[tuple[int, int]]],
                             chunks: dict[int, tuple[int, int, list[int]]]) -> None:
    """The free-space tree lists the same free space in every block group (entries for block
    groups that no longer exist are ignored: mkfs leaves some behind)."""
    listed: dict[int, list[tuple[int, int]]] = {g.start: [] for g in groups}
    bounds = sorted((g.start, g.start + g.length) for g in groups)
    starts = [s for s, _e in bounds]
    for objectid, kind, offset, data in _items(fs, FREE_SPACE_TREE):
        if kind not in (FREE_SPACE_EXTENT, FREE_SPACE_BITMAP):
            continue
        i = bisect_right(starts, objectid) - 1
        if i < 0 or objectid >= bounds[i][1]:
            continue  # a block group that is gone
        if objectid + offset > bounds[i][1]:
            raise _NotTrusted(f"free-space tree entry at {objectid} crosses its block group")
        runs = listed[starts[i]]
        if kind == FREE_SPACE_EXTENT:
            runs.append((objectid, offset))
            continue
        runs.extend(_set_bit_runs(bytes(data), offset // sb.sectorsize, objectid,
                                  sb.sectorsize))
    mirrors = _mirrors_logical(chunks)
    for group in groups:
        ours = _subtract(_merged(free[group.start]), mirrors)
        theirs = _subtract(_merged(sorted(listed[group.start])), mirrors)
        if ours != theirs:
            raise _NotTrusted(f"block group at {group.start}: its free-space tree and extent "
                              "tree disagree")


def _set_bit_runs(bitmap: bytes, bits: int, base: int, unit: int) -> list[tuple[int, int]]:
    """``(base + first * unit, count * unit)`` for each run of set bits among the first ``bits``
    of ``bitmap`` (bit 0 is the low bit of byte 0), found from where bits change."""
    value = int.from_bytes(bitmap, "little") & ((1 << bits) - 1)
    edges = value ^ (value << 1)  # bit i set where bit i differs from bit i - 1
    positions = []
    while edges:
        low = edges & -edges
        positions.append(low.bit_length() - 1)
        edges ^= low
    return [(base + first * unit, (end - first) * unit)
            for first, end in zip(positions[::2], positions[1::2], strict=True)]


def _mirrors_logical(chunks: dict[int, tuple[int, int, list[int]]]) -> list[tuple[int, int]]:
    """The logical ranges whose stripes hold a superblock or mirror."""
    out = []
    for start, (length, _kind, stripes) in chunks.items():
        for device in stripes:
            for mirror in SUPER_MIRRORS:
                if device <= mirror < device + length:
                    out.append((start + mirror - device, SUPER_SIZE))
    return sorted(out)


def _unallocated(sb: _Super, chunks: dict[int, tuple[int, int, list[int]]]
                 ) -> list[tuple[int, int]]:
    used = sorted((device, length) for length, _k, stripes in chunks.values()
                  for device in stripes)
    out, at = [], RESERVED
    for device, length in [*used, (sb.device_bytes, 0)]:
        if device > at:
            out.append((at, device - at))
        at = max(at, device + length)
    return out


def _merged(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for offset, length in runs:
        if length <= 0:
            continue
        if out and offset < out[-1][0] + out[-1][1]:
            raise _NotTrusted(f"free space at {offset} counted twice")
        if out and out[-1][0] + out[-1][1] == offset:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((offset, length))
    return out


def _subtract(runs: list[tuple[int, int]], holes: list[tuple[int, int]]
              ) -> list[tuple[int, int]]:
    """``runs`` (sorted, disjoint) less the ``holes``."""
    out: list[tuple[int, int]] = []
    for offset, length in runs:
        pieces = [(offset, offset + length)]
        for h, n in holes:
            pieces = [p for a, e in pieces
                      for p in ((a, min(e, h)), (max(a, h + n), e)) if p[0] < p[1]]
        out.extend((a, e - a) for a, e in pieces)
    return out
