"""An in-memory tape drive behind the transport contract: produces what tgt cannot
(VOLUME OVERFLOW, unit attention, medium errors) for the SSC and copy-writer tests."""

from __future__ import annotations

from vmkeep.scsi.errors import TransportError, check_condition
from vmkeep.scsi.sense import (
    BLANK_CHECK,
    MEDIUM_ERROR,
    NO_SENSE,
    UNIT_ATTENTION,
    VOLUME_OVERFLOW,
    decode_sense,
    fixed_sense,
)


class FakeTape:
    def __init__(self, capacity: int = 1 << 30, early_warning: int = 0) -> None:
        self.url = "fake://tape"
        self.records: list[bytes | None] = []  # None: filemark
        self.pos = 0
        self.capacity = capacity
        self.early = early_warning or capacity
        self.unit_attentions = 0
        self.medium_error_at: int | None = None
        self.dead = False

    def used(self) -> int:
        return sum(len(r) for r in self.records[: self.pos] if r)

    def _cc(self, op: int, sense: bytes) -> None:
        raise check_condition(f"fake opcode {op:02x}h", decode_sense(sense))

    def execute(self, cdb, data_out=None, data_in_len=0, timeout=60.0):  # type: ignore[no-untyped-def]
        if self.dead:
            raise TransportError(self.url, "connection reset")
        op = cdb[0]
        if self.unit_attentions:
            self.unit_attentions -= 1
            self._cc(op, fixed_sense(UNIT_ATTENTION, 0x28, 0))
        if op == 0x00 or op == 0x15 or op == 0x1B:
            return b"", 0
        if op == 0x05:
            return bytes([0, 0x10, 0, 0, 0, 1]), 0
        if op == 0x01:
            self.pos = 0
            return b"", 0
        if op == 0x0A:
            assert data_out is not None
            if self.used() + len(data_out) > self.capacity:
                self._cc(op, fixed_sense(VOLUME_OVERFLOW, 0, 2, eom=True))
            del self.records[self.pos :]
            self.records.append(bytes(data_out))
            self.pos += 1
            if self.used() > self.early:
                self._cc(op, fixed_sense(NO_SENSE, 0, 2, eom=True))
            return b"", 0
        if op == 0x10:
            n = int.from_bytes(cdb[2:5], "big")
            del self.records[self.pos :]
            self.records += [None] * n
            self.pos += n
            return b"", 0
        if op == 0x08:
            if self.medium_error_at == self.pos:
                self._cc(op, fixed_sense(MEDIUM_ERROR, 0x11, 0))
            if self.pos >= len(self.records):
                self._cc(op, fixed_sense(BLANK_CHECK, 0, 5, eom=True))
            rec = self.records[self.pos]
            self.pos += 1
            if rec is None:
                self._cc(op, fixed_sense(NO_SENSE, 0, 1, fm=True))
            assert rec is not None
            return rec[:data_in_len], max(0, data_in_len - len(rec))
        if op == 0x11:
            code, n = cdb[1] & 7, int.from_bytes(cdb[2:5], "big")
            if code == 3:
                self.pos = len(self.records)
            elif code == 1:
                while n and self.pos < len(self.records):
                    if self.records[self.pos] is None:
                        n -= 1
                    self.pos += 1
            return b"", 0
        if op == 0x34:  # READ POSITION short form: the logical object number (blocks + marks)
            out = bytearray(20)
            out[4:8] = self.pos.to_bytes(4, "big")
            return bytes(out), 0
        if op == 0x2B:
            self.pos = int.from_bytes(cdb[3:7], "big")
            return b"", 0
        raise AssertionError(f"fake: unsupported opcode {op:02x}")

    def close(self) -> None:
        pass
