"""The XFS log checks of :mod:`vmkeep.disks.xfs_free` on logs built here record by record, as the
kernel writes them (``xlog_sync``: each 512-byte block of a record stamped with its cycle, the
original words kept in the header, a record that runs past the log's end split with the wrapped
part's stamps one cycle on, the CRC over what is on disk) — the cases a short test guest does
not reach: a log that has wrapped, a record split over its end, a head at the wrap, writes in
flight around the head, a damaged record.  Real logs, written by mkfs, xfs_admin and Linux, are
in ``test_deleted_blocks_xfs.py``."""

from __future__ import annotations

import io
import struct

import google_crc32c
import pytest

from vmkeep.disks import xfs_free as x

BB = 512
LOG_BBS = 256
BLOCK = 4096
#: where the log starts in the fake volume (bytes); the superblock fields only place it
LOG_AT = 8 * BLOCK


def op(client: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IIBBH", 0x1234, len(payload), client, flags, 0) + payload


def superblock_transaction() -> list[bytes]:
    """A covering transaction: start, transaction header, the superblock buffer, commit."""
    buf_format = struct.pack("<HHHHqII", x.LI_BUF, 2, 0x9000, 1, 0, 1, 1)
    return [op(0x69, x.START_TRANS), op(0x69, 0, struct.pack("<IIiI", x.TRANS_HEADER_MAGIC,
                                                               0, 1, 2)),
            op(0x69, 0, buf_format), op(0x69, 0, bytes(384)), op(0x69, x.COMMIT_TRANS)]


def inode_transaction() -> list[bytes]:
    inode_format = struct.pack("<HHIQ", 0x123B, 3, 0, 128) + bytes(40)
    return [op(0x69, x.START_TRANS), op(0x69, 0, struct.pack("<IIiI", x.TRANS_HEADER_MAGIC,
                                                               0, 1, 1)),
            op(0x69, 0, inode_format), op(0x69, x.COMMIT_TRANS)]


def unmount_record() -> list[bytes]:
    return [op(0xAA, x.UNMOUNT_TRANS, struct.pack("<HHI", 0x556E, 0, 0))]


class LogBuilder:
    """A log of :data:`LOG_BBS` blocks, every block stamped with ``old_cycle`` at first (a log
    that has wrapped before), records written over it."""

    def __init__(self, old_cycle: int) -> None:
        self.data = bytearray()
        for _ in range(LOG_BBS):
            self.data += struct.pack(">I", old_cycle) + bytes(BB - 4)

    def write(self, blk: int, cycle: int, tail: tuple[int, int], ops: list[bytes],
              pad_blocks: int = 0, crc: bool = True) -> int:
        """A record at ``blk`` of ``cycle`` naming ``tail`` (cycle, block); the block after it."""
        body = bytearray(b"".join(ops))
        body += bytes(-len(body) % BB + pad_blocks * BB)
        length = len(body)
        originals = []
        for i in range(0, length, BB):  # stamp each data block with the cycle (xlog_pack_data)
            originals.append(struct.unpack_from(">I", body, i)[0])
            struct.pack_into(">I", body, i, cycle)
        header = bytearray(BB)
        struct.pack_into(">IIIIQQ", header, 0, x.LOG_MAGIC, cycle, 2, length,
                         cycle << 32 | blk, tail[0] << 32 | tail[1])
        struct.pack_into(">II", header, 36, 0, len(ops))
        struct.pack_into(f">{len(originals)}I", header, 44, *originals)
        struct.pack_into(">I", header, 320, 32768)
        record = bytes(header) + bytes(body)
        nblocks = len(record) // BB
        if blk + nblocks > LOG_BBS:  # xlog_split_iclog: the wrapped part one cycle on
            split = (LOG_BBS - blk) * BB
            wrapped = bytearray(record[split:])
            for i in range(0, len(wrapped), BB):
                struct.pack_into(">I", wrapped, i, struct.unpack_from(">I", wrapped, i)[0] + 1)
            record = record[:split] + bytes(wrapped)
        if crc:
            check = google_crc32c.Checksum(record[:32] + bytes(4) + record[36:x.LOG_HEADER_SIZE])
            check.update(record[BB:BB + length])
            record = record[:32] + check.digest()[::-1] + record[36:]
        for i in range(nblocks):
            at = (blk + i) % LOG_BBS * BB
            self.data[at:at + BB] = record[i * BB:(i + 1) * BB]
        return (blk + nblocks) % LOG_BBS

    def stamp(self, blk: int, cycle: int) -> None:
        struct.pack_into(">I", self.data, blk * BB, cycle)

    def check(self) -> str | None:
        """What :mod:`xfs_free` says of the log: ``None`` when at rest, else why not."""
        sb = x._Super(block=BLOCK, blocks=64, agblocks=64, agcount=1, agblklog=6, sectsize=BB,
                      uuid=bytes(16), logstart=LOG_AT // BLOCK, logblocks=LOG_BBS * BB // BLOCK)
        volume = bytes(LOG_AT) + bytes(self.data)
        try:
            x._log_at_rest(x._Reader(io.BytesIO(volume), len(volume)), sb)
        except x._NotTrusted as why:
            return str(why)
        return None


def test_a_covered_log_that_has_wrapped_is_at_rest() -> None:
    log = LogBuilder(old_cycle=4)  # the whole log written in cycle 4 before
    after = log.write(0, 5, (5, 0), superblock_transaction())
    log.write(after, 5, (5, 0), superblock_transaction())
    assert log.check() is None


def test_a_record_split_over_the_logs_end() -> None:
    """The first covering record starts 3 blocks before the end and wraps; the head is after
    the second, in the new cycle."""
    log = LogBuilder(old_cycle=6)
    start = LOG_BBS - 3
    after = log.write(start, 6, (6, start), superblock_transaction(), pad_blocks=4)
    assert after == 3  # header + 5 data blocks: 3 before the end, 3 after
    log.write(after, 7, (6, start), superblock_transaction())
    assert log.check() is None


def test_the_head_at_the_wrap() -> None:
    """Every block of the log in the current cycle: the head is block 0 of the next one."""
    log = LogBuilder(old_cycle=2)
    start = LOG_BBS - 2
    assert log.write(start, 2, (2, start), unmount_record()) == 0
    assert log.check() is None


def test_changes_between_tail_and_head_are_not_at_rest() -> None:
    log = LogBuilder(old_cycle=4)
    after = log.write(10, 5, (5, 10), inode_transaction())
    log.write(after, 5, (5, 10), superblock_transaction())
    # blocks 0..9 belong to cycle 5 too (earlier records, already checkpointed)
    for blk in range(10):
        log.stamp(blk, 5)
    assert log.check() == ("its log holds changes not yet written back (neither frozen nor "
                           "cleanly unmounted)")


def test_an_unmount_record_clean_whatever_its_tail_says() -> None:
    """The kernel's clean case: the last record an unmount record alone (libxfs's cleared logs
    name the log's end as its tail)."""
    log = LogBuilder(old_cycle=1)
    for blk in range(20):
        log.stamp(blk, 2)
    log.write(20, 2, (1, LOG_BBS - 2), unmount_record())
    assert log.check() is None


@pytest.mark.parametrize("where", ["before", "after"])
def test_writes_in_flight_around_the_head(where: str) -> None:
    """A crash while log buffers were in flight: a block of the old cycle just before the head,
    or of the new cycle just after it."""
    log = LogBuilder(old_cycle=4)
    after = log.write(0, 5, (5, 0), superblock_transaction())
    after = log.write(after, 5, (5, 0), superblock_transaction())
    if where == "before":
        log.stamp(1, 4)  # a data block of the first record never written
    else:
        log.stamp(after + 5, 5)  # a later record partly written
    assert log.check() == ("its log was written out of order at its head (writes in flight: "
                           "neither frozen nor cleanly unmounted)")


def test_a_damaged_record_between_tail_and_head() -> None:
    log = LogBuilder(old_cycle=4)
    after = log.write(0, 5, (5, 0), superblock_transaction())
    log.write(after, 5, (5, 0), superblock_transaction())
    log.data[BB + 100] ^= 0x01  # inside the first record's data
    assert log.check() == ("a log record between its log's tail and head fails its checksum")


def test_a_record_without_a_crc_may_only_be_an_unmount_record() -> None:
    log = LogBuilder(old_cycle=4)
    after = log.write(0, 5, (5, 0), superblock_transaction(), crc=False)
    log.write(after, 5, (5, 0), superblock_transaction())
    assert log.check() == "a log record between its log's tail and head has no checksum"


def test_cycle_numbers_that_jump() -> None:
    log = LogBuilder(old_cycle=2)
    for blk in range(10):
        log.stamp(blk, 5)
    assert log.check() == "its log's cycle numbers jump (5 to 2)"


def test_more_records_than_a_log_at_rest_holds() -> None:
    log = LogBuilder(old_cycle=4)
    blk = 0
    for _ in range(x.MAX_RECORDS + 1):
        blk = log.write(blk, 5, (5, 0), superblock_transaction())
    assert log.check() == (f"its log holds more than {x.MAX_RECORDS} records (changes not "
                           "written back)")
