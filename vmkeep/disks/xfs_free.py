"""The free blocks of an XFS volume, from its free-space B+trees — only when the volume vouches
for them (part of :mod:`vmkeep.disks.deleted_blocks`, which owns the contract for callers).

:func:`free_runs` returns volume ``(offset, length)`` runs of the extents each allocation group's
by-block free-space tree (``bnobt``) records, each at least ``min_bytes`` long — or, as a string,
why they are not trusted.  Guest disks are untrusted and a wrong run loses data, so the volume is
searched only when all of this holds:

- **version 5** (metadata checksums, the default since xfsprogs 3.2.3 / 2015): the superblock,
  every AGF, AGFL and free-space tree block pass their CRC32C, name the file system's UUID and
  where they are; no realtime subvolume, an internal log, no ``needsrepair`` flag, not left
  half-made by ``mkfs`` (``sb_inprogress``);
- **at rest or frozen — the log holds nothing that is not on disk yet**.  XFS keeps no "clean"
  flag: the log says it.  Its head is found as the kernel finds it (the cycle numbers stamped on
  every 512-byte log block change there), then every record from the tail the last record names
  up to the head is read, its CRC checked, and each operation in it must be an unmount record
  (a clean unmount; a freeze on Linux before 5.12) or a transaction that logs the superblock
  alone (the "dummy" transactions with which Linux ≥ 5.12 *covers* the log at ``fsfreeze`` —
  VMware Tools' quiescing of a Linux guest — and when idle).  Anything else in the log (inodes,
  AG headers, free-space blocks, intents) is a change that recovery would replay, so the trees
  on disk may lag it: the volume is read as usual.  Log writes that are not in order around the
  head (a crash while they were in flight) count as not at rest too;
- **the trees agree with their headers**: each level of the tree has the level its parent says,
  keys and records are sorted, extents lie inside the AG and do not overlap, the extents add up
  to the AGF's free-block count and the longest is the AGF's ``longest``;
- **metadata in use**: the AG headers (superblock, AGF, AGI, AGFL sectors), the blocks on the
  AGFL, the roots of every tree the AGF names, every block of the free-space tree itself and the
  log are in no free extent.

Everything read is bounded: the head search reads single log blocks (a binary search) plus
:data:`HEAD_WINDOW` on each side of the head, at most :data:`MAX_RECORDS` records, and the
trees' blocks; the caller's read budget holds all of it.  Raises nothing of its own for bad guest
data beyond what the caller catches (any exception means "read as usual").
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import google_crc32c

from vmkeep.disks.backup_superblock import primary_damaged
from vmkeep.disks.fs.xfs import crc_ok
from vmkeep.disks.volumes import Volume

BB = 512
XFS_MAGIC = b"XFSB"
AGF_MAGIC, AGFL_MAGIC = b"XAGF", b"XAFL"
#: by-block free-space tree block (version 5)
BNOBT_MAGIC = b"AB3B"
LOG_MAGIC = 0xFEEDBABE
#: the smallest allocation group mkfs.xfs makes (16 MiB; a lone AG may be smaller)
MIN_AG_BYTES = 16 << 20
#: superblock: CRC offset; incompatible features: separate metadata UUID, needs repair
SB_CRC = 224
INCOMPAT_META_UUID, INCOMPAT_NEEDSREPAIR = 0x4, 0x10
#: AGF / AGFL CRC offsets, the free-space tree block header size and its CRC offset
AGF_CRC, AGFL_CRC, AGFL_HEADER = 216, 32, 36
BTREE_HEADER, BTREE_CRC = 56, 52
#: log record header: size of the part the CRC covers, of an extended header, cycle words each
#: (``sizeof(struct xlog_rec_header)``: 324 bytes of fields padded to 8)
LOG_HEADER_SIZE, LOG_EXT_HEADER_SIZE, CYCLE_WORDS = 328, 260, 64
LOG_HEADER_CYCLE_SIZE = CYCLE_WORDS * BB
XLOG_VERSION_2 = 2
#: log operation flags and client ids (xfs_log_format.h)
START_TRANS, COMMIT_TRANS, CONTINUE_TRANS, WAS_CONT_TRANS = 0x01, 0x02, 0x04, 0x08
UNMOUNT_TRANS = 0x20
#: log item types (native byte order in the log, little-endian on x86): a buffer
LI_BUF = 0x123C
TRANS_HEADER_MAGIC = 0x5452414E  # "TRAN"
#: log blocks on each side of the head whose cycle numbers must agree (the kernel's largest
#: amount of log writes in flight: 8 log buffers of 256 KiB)
HEAD_WINDOW = 4096
#: records between tail and head read at most (a covered log holds two; a clean one one)
MAX_RECORDS = 16


class _NotTrusted(Exception):
    """Why the free-space trees are not trusted (its message is the note)."""


@dataclass(frozen=True)
class _Super:
    block: int
    blocks: int
    agblocks: int
    agcount: int
    agblklog: int
    sectsize: int
    uuid: bytes
    logstart: int
    logblocks: int

    def daddr_bytes(self, agno: int, agbno: int) -> int:
        return (agno * self.agblocks + agbno) * self.block

    def fsb_to_ag(self, fsb: int) -> tuple[int, int]:
        return fsb >> self.agblklog, fsb & ((1 << self.agblklog) - 1)


class _Reader:
    def __init__(self, fh: Any, size: int) -> None:
        self.fh, self.size = fh, size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise _NotTrusted(f"metadata at {offset} lies past the volume's end")
        self.fh.seek(offset)
        data = bytes(self.fh.read(length))
        if len(data) != length:
            raise _NotTrusted(f"metadata at {offset} lies past the volume's end")
        return data


def free_runs(vol: Volume, min_bytes: int) -> list[tuple[int, int]] | str:
    """Volume ``(offset, length)`` runs of free blocks, or why the free-space trees are not
    trusted (see the module docstring)."""
    fh = vol.open()
    reader = _Reader(fh, vol.size)
    try:
        sb = _superblock(reader, fh)
        _log_at_rest(reader, sb)
        runs: list[tuple[int, int]] = []
        for agno in range(sb.agcount):
            for start, count in _ag_free(reader, sb, agno):
                offset, length = sb.daddr_bytes(agno, start), count * sb.block
                if runs and runs[-1][0] + runs[-1][1] == offset:  # across an AG boundary
                    offset, length = runs[-1][0], runs[-1][1] + length
                    runs.pop()
                runs.append((offset, length))
    except _NotTrusted as why:
        return str(why)
    return [(o, n) for o, n in runs if n >= min_bytes]


# -- superblock ------------------------------------------------------------------------------
def _superblock(reader: _Reader, fh: Any) -> _Super:
    raw = reader.read(0, BB)
    if raw[:4] != XFS_MAGIC:
        raise _NotTrusted("no XFS superblock")
    version, sectsize = struct.unpack_from(">HH", raw, 100)
    if version & 0xF != 5:
        raise _NotTrusted(f"XFS version {version & 0xF} keeps no checksums (not searched)")
    if primary_damaged(fh, "xfs"):
        raise _NotTrusted("its superblock checksum does not match")
    block, dblocks, rblocks = struct.unpack_from(">IQQ", raw, 4)
    logstart, = struct.unpack_from(">Q", raw, 48)
    agblocks, agcount, _rbm, logblocks = struct.unpack_from(">IIII", raw, 84)
    agblklog, inprogress = raw[124], raw[126]
    incompat, = struct.unpack_from(">I", raw, 216)
    uuid = raw[248:264] if incompat & INCOMPAT_META_UUID else raw[32:48]
    if inprogress:
        raise _NotTrusted("mkfs did not finish it")
    if incompat & INCOMPAT_NEEDSREPAIR:
        raise _NotTrusted("it is marked as needing xfs_repair")
    if rblocks:
        raise _NotTrusted("a realtime subvolume (not searched)")
    if not logstart:
        raise _NotTrusted("an external log device (its log cannot be checked)")
    if (block < BB or block & (block - 1) or not agblocks or not agcount
            or agblocks > 1 << agblklog or sectsize < BB or sectsize > block
            or (agcount > 1 and agblocks * block < MIN_AG_BYTES)
            or not (agcount - 1) * agblocks < dblocks <= agcount * agblocks):
        raise _NotTrusted(f"implausible geometry ({agcount} AGs of {agblocks} blocks)")
    if dblocks * block > reader.size:
        raise _NotTrusted(f"its block count ({dblocks}) does not fit the volume")
    return _Super(block, dblocks, agblocks, agcount, agblklog, sectsize, uuid, logstart,
                  logblocks)


# -- the log ---------------------------------------------------------------------------------
class _Log:
    """The internal log as a ring of 512-byte blocks."""

    def __init__(self, reader: _Reader, sb: _Super) -> None:
        agno, agbno = sb.fsb_to_ag(sb.logstart)
        self.reader, self.at = reader, sb.daddr_bytes(agno, agbno)
        self.bbs = sb.logblocks * sb.block // BB
        if self.bbs < 64 or agbno + sb.logblocks > sb.agblocks:
            raise _NotTrusted(f"implausible log ({sb.logblocks} blocks at {sb.logstart})")

    def blocks(self, first: int, count: int) -> bytes:
        """``count`` blocks from ``first``, wrapping at the log's end."""
        first %= self.bbs
        head = min(count, self.bbs - first)
        data = self.reader.read(self.at + first * BB, head * BB)
        if count > head:
            data += self.reader.read(self.at, (count - head) * BB)
        return data

    @staticmethod
    def cycle_of(block: bytes, at: int = 0) -> int:
        magic, cycle = struct.unpack_from(">II", block, at)
        return cycle if magic == LOG_MAGIC else magic

    def cycle(self, blk: int) -> int:
        return self.cycle_of(self.blocks(blk, 1))


def _log_at_rest(reader: _Reader, sb: _Super) -> None:
    log = _Log(reader, sb)
    head, head_cycle = _find_head(log)
    header_blk = _last_header(log, head)
    last = _RecordHeader(log.blocks(header_blk, 1))
    if last.num_ops == 1 and last.cycle == (head_cycle if header_blk < head else head_cycle - 1):
        # the kernel's clean case: the last record is an unmount record alone (its tail is
        # not looked at: libxfs's cleared logs name the log's end there)
        after, ops = _record(log, header_blk, last.cycle)
        if after == (head, head_cycle) and all(flags & UNMOUNT_TRANS for _c, flags, _p in ops):
            return
    tail_cycle, tail = last.tail_lsn >> 32, last.tail_lsn & 0xFFFFFFFF
    if tail >= log.bbs:
        raise _NotTrusted("its log's tail lies outside the log")
    _check_records(log, tail, tail_cycle, head, head_cycle)


def _find_head(log: _Log) -> tuple[int, int]:
    """``(head block, cycle of the records before it)``: where the next record would be written,
    as the kernel's ``xlog_find_head`` finds it — checked in order on both sides."""
    first, last = log.cycle(0), log.cycle(log.bbs - 1)
    if first == 0:
        raise _NotTrusted("its log was never written")
    if first == last:  # every block of this cycle: the head is at the wrap
        head, cycle = log.bbs, first
    elif last == first - 1:
        lo, hi = 0, log.bbs - 1  # cycle(lo) == first, cycle(hi) == last
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if log.cycle(mid) == first:
                lo = mid
            else:
                hi = mid
        head, cycle = hi, first
    else:
        raise _NotTrusted(f"its log's cycle numbers jump ({first} to {last})")
    # as the kernel checks: no block of the old cycle just before the head, none of the new
    # one just after it (blocks stamped 0 — extended headers libxfs left blank — are neither)
    before = log.blocks(head - min(head, HEAD_WINDOW), min(head, HEAD_WINDOW))
    after_n = min(log.bbs - head, HEAD_WINDOW)
    after = log.blocks(head, after_n) if after_n else b""
    old = last if first != last else first - 1
    if any(log.cycle_of(before, i) == old for i in range(0, len(before), BB)) or any(
            log.cycle_of(after, i) == cycle for i in range(0, len(after), BB)):
        raise _NotTrusted("its log was written out of order at its head (writes in flight: "
                          "neither frozen nor cleanly unmounted)")
    return (0, cycle + 1) if head == log.bbs else (head, cycle)


def _last_header(log: _Log, head: int) -> int:
    for back in range(1, HEAD_WINDOW + 1):
        blk = (head - back) % log.bbs
        if struct.unpack_from(">I", log.blocks(blk, 1))[0] == LOG_MAGIC:
            return blk
    raise _NotTrusted("no log record before its log's head")


class _RecordHeader:
    def __init__(self, raw: bytes) -> None:
        (self.magic, self.cycle, self.version, self.length, self.lsn, self.tail_lsn
         ) = struct.unpack_from(">IIIIQQ", raw)
        self.num_ops, = struct.unpack_from(">I", raw, 40)
        self.cycle_data = struct.unpack_from(f">{CYCLE_WORDS}I", raw, 44)
        self.size, = struct.unpack_from(">I", raw, 320)
        if self.magic != LOG_MAGIC:
            raise _NotTrusted("a log record header is missing between its log's tail and head")

    @property
    def header_blocks(self) -> int:
        if self.version & XLOG_VERSION_2 and self.size > LOG_HEADER_CYCLE_SIZE:
            return -(-self.size // LOG_HEADER_CYCLE_SIZE)
        return 1


def _check_records(log: _Log, tail: int, tail_cycle: int, head: int, head_cycle: int) -> None:
    """Every record from the tail to the head is whole, its CRC right, and changes nothing
    but the superblock (or is an unmount record)."""
    at = (tail, tail_cycle)
    for _ in range(MAX_RECORDS):
        if at == (head, head_cycle):
            return
        at, ops = _record(log, *at)
        _only_superblock(ops)
    raise _NotTrusted(f"its log holds more than {MAX_RECORDS} records (changes not written back)")


def _record(log: _Log, blk: int, cycle: int) -> tuple[tuple[int, int], list[_Operation]]:
    """The record at ``blk`` of ``cycle``, checked (where its header says, whole, its CRC):
    ``((block, cycle) after it, its operations)``.  mkfs writes its unmount record without a
    CRC: a record without one may only be an unmount record."""
    rec = _RecordHeader(log.blocks(blk, 1))
    if rec.lsn != (cycle << 32 | blk) or rec.cycle != cycle:
        raise _NotTrusted("a log record between its log's tail and head is not where its "
                          "header says")
    hblks, dblks = rec.header_blocks, -(-rec.length // BB)
    if rec.length <= 0 or hblks + dblks > log.bbs // 2:
        raise _NotTrusted("a log record of implausible length")
    raw = log.blocks(blk, hblks + dblks)
    headers, data = raw[:hblks * BB], bytearray(raw[hblks * BB:])
    unchecked = headers[32:36] == bytes(4)
    if not unchecked:
        _check_record_crc(headers, bytes(data[:rec.length]),
                          -(-rec.length // LOG_HEADER_CYCLE_SIZE))
    _unpack_cycles(rec, headers, data)
    ops = list(_operations(bytes(data[:rec.length]), rec.num_ops))
    if unchecked and not all(flags & UNMOUNT_TRANS for _c, flags, _p in ops):
        raise _NotTrusted("a log record between its log's tail and head has no checksum")
    blk += hblks + dblks
    if blk >= log.bbs:
        blk, cycle = blk - log.bbs, cycle + 1
    return (blk, cycle), ops


def _check_record_crc(headers: bytes, data: bytes, xheads: int) -> None:
    """The kernel's ``xlog_cksum``: the header, the extended headers the data needs (one per
    32 KiB), the data as written (cycle-stamped)."""
    stored = headers[32:36]
    crc = google_crc32c.Checksum(headers[:32] + bytes(4) + headers[36:LOG_HEADER_SIZE])
    for i in range(1, xheads):
        crc.update(headers[i * BB:i * BB + LOG_EXT_HEADER_SIZE])
    crc.update(data)
    if crc.digest()[::-1] != stored:
        raise _NotTrusted("a log record between its log's tail and head fails its checksum")


def _unpack_cycles(rec: _RecordHeader, headers: bytes, data: bytearray) -> None:
    """Put back the first word of each data block, which the cycle number stamped over."""
    for i in range(len(data) // BB):
        j, k = divmod(i, CYCLE_WORDS)
        if j == 0:
            word = rec.cycle_data[k]
        else:
            word = struct.unpack_from(">I", headers, j * BB + 4 + 4 * k)[0]
        data[i * BB:i * BB + 4] = word.to_bytes(4, "big")


#: one log operation: ``(client id, flags, payload)``
_Operation = tuple[int, int, bytes]


def _operations(data: bytes, count: int) -> Iterator[_Operation]:
    """``(client id, flags, payload)`` of each of the record's ``count`` operations."""
    at = 0
    for _ in range(count):
        if at + 12 > len(data):
            raise _NotTrusted("a log record's operations overrun it")
        _tid, length, client, flags = struct.unpack_from(">IIBB", data, at)
        at += 12
        if at + length > len(data):
            raise _NotTrusted("a log record's operations overrun it")
        yield client, flags, data[at:at + length]
        at += length


def _only_superblock(operations: list[_Operation]) -> None:
    """Every operation is part of an unmount record or of a transaction logging the
    superblock alone."""
    regions = 0  # data regions still to come for the last buffer item
    for _client, flags, payload in operations:
        if flags & (CONTINUE_TRANS | WAS_CONT_TRANS):
            raise _NotTrusted("its log holds a transaction split over records (changes not "
                              "written back)")
        if flags & UNMOUNT_TRANS or (flags & (START_TRANS | COMMIT_TRANS) and not payload):
            continue
        if regions:
            regions -= 1  # the superblock's logged bytes
            continue
        if len(payload) >= 16 and struct.unpack_from("<I", payload)[0] == TRANS_HEADER_MAGIC:
            continue
        if len(payload) >= 16:
            kind, size = struct.unpack_from("<HH", payload)
            blkno, = struct.unpack_from("<q", payload, 8)
            if kind == LI_BUF and blkno == 0 and size >= 1:
                regions = size - 1
                continue
        raise _NotTrusted("its log holds changes not yet written back (neither frozen nor "
                          "cleanly unmounted)")


# -- free-space trees ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Agf:
    length: int
    roots: tuple[int, int, int]
    levels: tuple[int, int, int]
    flfirst: int
    fllast: int
    flcount: int
    freeblks: int
    longest: int


def _agf(reader: _Reader, sb: _Super, agno: int) -> _Agf:
    raw = reader.read(sb.daddr_bytes(agno, 0) + sb.sectsize, sb.sectsize)
    if raw[:4] != AGF_MAGIC or not crc_ok(raw, AGF_CRC) or raw[64:80] != sb.uuid:
        raise _NotTrusted(f"AG {agno}: its AGF fails its checks")
    version, seqno, length = struct.unpack_from(">III", raw, 4)
    roots = struct.unpack_from(">III", raw, 16)
    levels = struct.unpack_from(">III", raw, 28)
    flfirst, fllast, flcount, freeblks, longest = struct.unpack_from(">IIIII", raw, 40)
    want = min(sb.agblocks, sb.blocks - agno * sb.agblocks)
    if version != 1 or seqno != agno or length != want:
        raise _NotTrusted(f"AG {agno}: its AGF does not describe it")
    return _Agf(length, roots, levels, flfirst, fllast, flcount, freeblks, longest)


def _agfl_blocks(reader: _Reader, sb: _Super, agno: int, agf: _Agf) -> list[int]:
    raw = reader.read(sb.daddr_bytes(agno, 0) + 3 * sb.sectsize, sb.sectsize)
    seqno, = struct.unpack_from(">I", raw, 4)
    if (raw[:4] != AGFL_MAGIC or seqno != agno or not crc_ok(raw, AGFL_CRC)
            or raw[8:24] != sb.uuid):
        raise _NotTrusted(f"AG {agno}: its AGFL fails its checks")
    size = (sb.sectsize - AGFL_HEADER) // 4
    if not agf.flcount:
        return []
    if agf.flfirst >= size or agf.fllast >= size or agf.flcount > size:
        raise _NotTrusted(f"AG {agno}: its AGFL indexes are out of range")
    entries = struct.unpack_from(f">{size}I", raw, AGFL_HEADER)
    return [entries[(agf.flfirst + i) % size] for i in range(agf.flcount)]


def _ag_free(reader: _Reader, sb: _Super, agno: int) -> list[tuple[int, int]]:
    """The AG's free extents ``(agbno, blocks)``, sorted, checked (see the module docstring)."""
    agf = _agf(reader, sb, agno)
    extents, tree_blocks = _walk_bnobt(reader, sb, agno, agf)
    total = sum(n for _s, n in extents)
    if total != agf.freeblks:
        raise _NotTrusted(f"AG {agno}: {total} blocks free in its tree, {agf.freeblks} in its AGF")
    if max((n for _s, n in extents), default=0) != agf.longest:
        raise _NotTrusted(f"AG {agno}: its longest free extent is not the AGF's")
    header_blocks = -(-4 * sb.sectsize // sb.block)
    used = [(0, header_blocks), *((b, 1) for b in tree_blocks),
            *((b, 1) for b in _agfl_blocks(reader, sb, agno, agf)),
            *((r, 1) for r, lv in zip(agf.roots, agf.levels, strict=True) if lv)]
    log_ag, log_bno = sb.fsb_to_ag(sb.logstart)
    if log_ag == agno:
        used.append((log_bno, sb.logblocks))
    starts = [s for s, _n in extents]
    for first, count in used:
        i = bisect_right(starts, first + count - 1) - 1
        if i >= 0 and starts[i] + extents[i][1] > first:
            raise _NotTrusted(f"AG {agno}: its metadata lies in blocks its tree calls free")
    return extents


def _walk_bnobt(reader: _Reader, sb: _Super, agno: int,
                agf: _Agf) -> tuple[list[tuple[int, int]], list[int]]:
    """The records of the AG's by-block tree, level by level from the root, every block
    checked; and the tree's blocks."""
    root, levels = agf.roots[0], agf.levels[0]
    if not 0 < levels <= 16:
        raise _NotTrusted(f"AG {agno}: its free-space tree has {levels} levels")
    leaf_max = (sb.block - BTREE_HEADER) // 8
    node_max = (sb.block - BTREE_HEADER) // 12
    level_blocks, seen = [root], {root}
    extents: list[tuple[int, int]] = []
    for level in range(levels - 1, -1, -1):
        below: list[int] = []
        for bno in level_blocks:
            raw = _tree_block(reader, sb, agno, bno, level)
            numrecs, = struct.unpack_from(">H", raw, 6)
            if numrecs > (leaf_max if level == 0 else node_max) or (
                    numrecs == 0 and (level or bno != root)):
                raise _NotTrusted(f"AG {agno}: free-space tree block {bno} holds {numrecs}")
            if level == 0:
                extents.extend(struct.iter_unpack(">II", raw[BTREE_HEADER:
                                                             BTREE_HEADER + 8 * numrecs]))
                continue
            at = BTREE_HEADER + node_max * 8
            for ptr, in struct.iter_unpack(">I", raw[at:at + 4 * numrecs]):
                if ptr in seen or not 0 < ptr < agf.length:
                    raise _NotTrusted(f"AG {agno}: its free-space tree points at {ptr} "
                                      "twice or outside the AG")
                seen.add(ptr)
                below.append(ptr)
        level_blocks = below
    end = 0
    for start, count in extents:
        if count <= 0 or start < end or start + count > agf.length:
            raise _NotTrusted(f"AG {agno}: its free extents overlap, are out of order or "
                              "leave the AG")
        end = start + count
    return extents, sorted(seen)


def _tree_block(reader: _Reader, sb: _Super, agno: int, bno: int, level: int) -> bytes:
    raw = reader.read(sb.daddr_bytes(agno, bno), sb.block)
    got_level, = struct.unpack_from(">H", raw, 4)
    blkno, = struct.unpack_from(">Q", raw, 16)
    owner, = struct.unpack_from(">I", raw, 48)
    if (raw[:4] != BNOBT_MAGIC or got_level != level or raw[32:48] != sb.uuid or owner != agno
            or blkno * BB != sb.daddr_bytes(agno, bno) or not crc_ok(raw, BTREE_CRC)):
        raise _NotTrusted(f"AG {agno}: free-space tree block {bno} fails its checks")
    return raw
