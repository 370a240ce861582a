"""SSC (tape drive) commands over a :class:`~vmkeep.scsi.transport.Transport`.

Variable-block mode only (every block is written and read with an explicit length).  What each
method guarantees:

* :meth:`TapeDrive.write_block` returns only when the drive accepted the whole block.  Early
  warning (CHECK CONDITION, NO SENSE/RECOVERED ERROR with EOM) means *written*; it is returned as
  ``True`` so the caller closes its file and changes cartridges.  VOLUME OVERFLOW, any other
  sense or a transport error raise: the block is not (known to be) on tape.
* :meth:`TapeDrive.read_block` returns the block, or raises :class:`FilemarkReached` (a filemark
  was read; the position is after it) or :class:`EndOfData` (blank check: nothing recorded
  beyond).  A block longer or shorter than asked (ILI) raises :class:`BlockSizeMismatch`.
* Positioning: :meth:`rewind`, :meth:`space_filemarks`, :meth:`space_to_eod`;
  :meth:`read_position` returns None when the drive says the position is unknown (tgt's stub
  always does); :meth:`locate` raises ``IllegalRequest`` where unsupported (tgt).

tgt quirks handled (see :mod:`vmkeep.scsi`): end of data arrives as BLANK CHECK + EOM (real
drives: NO SENSE 00/05 with EOM, also mapped to :class:`EndOfData`); a write past capacity is
accepted with EOM and never overflows; READ POSITION is a stub; LOCATE/ERASE are unsupported;
a read of a block with the wrong length returns no data.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from vmkeep.scsi.errors import CheckCondition, ScsiError, UnitAttention
from vmkeep.scsi.sense import BLANK_CHECK, NO_SENSE, RECOVERED_ERROR
from vmkeep.scsi.transport import IO_TIMEOUT, LONG_TIMEOUT, SHORT_TIMEOUT, Transport

MAX_TRIES_UNIT_ATTENTION = 3


class TapeError(ScsiError):
    """Tape: {}"""


class FilemarkReached(TapeError):
    """Tape: filemark reached"""


class EndOfData(TapeError):
    """Tape: end of recorded data"""


class BlockSizeMismatch(TapeError):
    """Tape: block length differs from the {} bytes asked for ({})"""


@dataclass(frozen=True)
class BlockLimits:
    granularity: int
    max_block: int
    min_block: int

    def choose(self, preferred: int = 1 << 20) -> int:
        """The block size to write: ``preferred`` (default 1 MiB) clamped to the drive's limits
        (a drive that reports no maximum gets ``preferred``), rounded down to a multiple of 512
        for tar."""
        size = preferred if self.max_block == 0 else min(preferred, self.max_block)
        size = max(size, self.min_block)
        return max(512, size - size % 512)


def _u24(n: int) -> bytes:
    if not 0 <= n < 1 << 24:
        raise ValueError(f"transfer length {n} out of range")
    return n.to_bytes(3, "big")


class TapeDrive:
    """One tape drive behind a transport (not thread-safe; one owner at a time)."""

    def __init__(self, transport: Transport, name: str = "") -> None:
        self.t = transport
        self.name = name or transport.url

    # -- status ------------------------------------------------------------------------------
    def test_unit_ready(self) -> None:
        """Raises NotReady (no cartridge), UnitAttention (reset / medium changed), …"""
        self.t.execute(bytes(6), timeout=SHORT_TIMEOUT)

    def wait_ready(self) -> None:
        """TEST UNIT READY, consuming the unit attentions a load or reset leaves behind."""
        for _ in range(MAX_TRIES_UNIT_ATTENTION):
            try:
                self.test_unit_ready()
                return
            except UnitAttention:
                continue
        self.test_unit_ready()

    def inquiry_serial(self) -> str | None:
        """The unit serial number (VPD page 80h), or None when the drive has none."""
        try:
            data, _ = self.t.execute(bytes([0x12, 1, 0x80, 0, 255, 0]), data_in_len=255)
        except CheckCondition:
            return None
        if len(data) < 4:
            return None
        return data[4 : 4 + data[3]].decode("ascii", "replace").strip() or None

    def read_block_limits(self) -> BlockLimits:
        data, _ = self.t.execute(bytes([0x05, 0, 0, 0, 0, 0]), data_in_len=6)
        if len(data) < 6:
            raise TapeError(f"{self.name}: short READ BLOCK LIMITS answer")
        return BlockLimits(data[0] & 0x1F, int.from_bytes(data[1:4], "big"),
                           int.from_bytes(data[4:6], "big"))

    # -- medium ------------------------------------------------------------------------------
    def load(self) -> None:
        self.t.execute(bytes([0x1B, 0, 0, 0, 1, 0]), timeout=LONG_TIMEOUT)

    def unload(self) -> None:
        self.t.execute(bytes([0x1B, 0, 0, 0, 0, 0]), timeout=LONG_TIMEOUT)

    def rewind(self) -> None:
        self.t.execute(bytes([0x01, 0, 0, 0, 0, 0]), timeout=LONG_TIMEOUT)

    def set_variable_blocks(self) -> None:
        """MODE SELECT(6): buffered mode, block length 0 (variable)."""
        self.set_block_length(0)

    def set_block_length(self, length: int) -> None:
        """MODE SELECT(6) with one block descriptor; 0 selects variable-block mode."""
        params = bytes([0, 0, 0x10, 8]) + bytes([0, 0, 0, 0, 0]) + _u24(length)
        self.t.execute(bytes([0x15, 0x10, 0, 0, len(params), 0]), data_out=params)

    # -- data --------------------------------------------------------------------------------
    def write_block(self, block: bytes | memoryview) -> bool:
        """Write one variable-length block; True at early warning (block written)."""
        cdb = bytes([0x0A, 0]) + _u24(len(block)) + b"\0"
        return _early_warning(lambda: self.t.execute(cdb, data_out=block, timeout=IO_TIMEOUT))

    @property
    def can_queue(self) -> bool:
        """True when the transport can have more than one command outstanding
        (:meth:`submit_write` then does not wait)."""
        return hasattr(self.t, "submit")

    def submit_write(self, block: bytes | memoryview) -> Callable[[], bool]:
        """Send :meth:`write_block`'s command without waiting for it where the transport can
        (:attr:`can_queue`; else it is written now); returns the function that waits for it
        and returns what ``write_block`` would (True at early warning) or raises its error.
        ``block`` must not change until then.  Every returned function must be called, in
        order."""
        cdb = bytes([0x0A, 0]) + _u24(len(block)) + b"\0"
        submit = getattr(self.t, "submit", None)
        if submit is None:
            ew = self.write_block(block)
            return lambda: ew
        pending = submit(cdb, block, IO_TIMEOUT)
        return lambda: _early_warning(pending.result)

    def write_filemarks(self, count: int = 1) -> bool:
        """Write ``count`` filemarks (synchronous: buffered data is flushed to the medium first).
        True at early warning."""
        cdb = bytes([0x10, 0]) + _u24(count) + b"\0"
        return _early_warning(lambda: self.t.execute(cdb, timeout=LONG_TIMEOUT))

    def read_block(self, length: int) -> bytes:
        cdb = bytes([0x08, 0]) + _u24(length) + b"\0"
        try:
            data, residual = self.t.execute(cdb, data_in_len=length, timeout=IO_TIMEOUT)
        except CheckCondition as exc:
            s = exc.sense
            if s.valid and s.filemark:
                raise FilemarkReached() from None
            if s.valid and (s.key == BLANK_CHECK or (s.key == NO_SENSE and s.ascq == 0x05)):
                raise EndOfData() from None
            if s.valid and s.ili:
                raise BlockSizeMismatch(length, s.describe()) from None
            raise
        if residual or len(data) != length:
            raise BlockSizeMismatch(length, f"got {len(data)} bytes, residual {residual}")
        return data

    # -- positioning -------------------------------------------------------------------------
    def space_filemarks(self, count: int) -> None:
        """Space over ``count`` filemarks (negative: backwards)."""
        self.t.execute(bytes([0x11, 1]) + (count & 0xFFFFFF).to_bytes(3, "big") + b"\0",
                       timeout=LONG_TIMEOUT)

    def space_to_eod(self) -> None:
        self.t.execute(bytes([0x11, 3, 0, 0, 0, 0]), timeout=LONG_TIMEOUT)

    def read_position(self) -> tuple[int, int] | None:
        """(partition, block) from READ POSITION short form, None when the drive does not know
        (LOLU/BPU set, as tgt's stub always answers)."""
        data, _ = self.t.execute(bytes([0x34, 0] + [0] * 8), data_in_len=20)
        if len(data) < 20 or data[0] & 0x04:
            return None
        return data[1], struct.unpack(">I", data[4:8])[0]

    def locate(self, block: int) -> None:
        """LOCATE(10) to a logical block; IllegalRequest where unsupported (tgt)."""
        self.t.execute(bytes([0x2B, 0, 0]) + struct.pack(">I", block) + bytes(3),
                       timeout=LONG_TIMEOUT)

    def goto_file(self, number: int) -> None:
        """Position at the first block of tape file ``number`` (0 = the label): rewind and
        space forward over ``number`` filemarks (works on every drive; LOCATE needs a block
        address that tgt cannot report)."""
        self.rewind()
        if number:
            self.space_filemarks(number)

    def close(self) -> None:
        self.t.close()


def _early_warning(command: Callable[[], object]) -> bool:
    """Run a WRITE or WRITE FILEMARKS ``command``; True when it answered EOM early warning
    (the data or filemark was written), its error otherwise."""
    try:
        command()
    except CheckCondition as exc:
        s = exc.sense
        if s.valid and s.eom and s.key in (NO_SENSE, RECOVERED_ERROR):
            return True
        raise
    return False
