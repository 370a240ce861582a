"""Sense data decoding (SPC-4 §4.5): fixed (70h/71h) and descriptor (72h/73h) formats.

Only what tape and changer code needs: sense key, ASC/ASCQ, the stream-command bits FM
(filemark read), EOM (end of medium / early warning) and ILI (block length mismatch), and the
INFORMATION field (for ILI and EOM: requested minus actual, in bytes or blocks).  Malformed or
short sense decodes to key ``NO_SENSE`` with ``valid=False``; callers treat a CHECK CONDITION
without usable sense as an error, never as success.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_SENSE, RECOVERED_ERROR, NOT_READY, MEDIUM_ERROR, HARDWARE_ERROR = 0x0, 0x1, 0x2, 0x3, 0x4
ILLEGAL_REQUEST, UNIT_ATTENTION, DATA_PROTECT, BLANK_CHECK = 0x5, 0x6, 0x7, 0x8
ABORTED_COMMAND, VOLUME_OVERFLOW, MISCOMPARE = 0xB, 0xD, 0xE

KEY_NAMES = {
    0x0: "NO SENSE", 0x1: "RECOVERED ERROR", 0x2: "NOT READY", 0x3: "MEDIUM ERROR",
    0x4: "HARDWARE ERROR", 0x5: "ILLEGAL REQUEST", 0x6: "UNIT ATTENTION", 0x7: "DATA PROTECT",
    0x8: "BLANK CHECK", 0x9: "VENDOR SPECIFIC", 0xA: "COPY ABORTED", 0xB: "ABORTED COMMAND",
    0xD: "VOLUME OVERFLOW", 0xE: "MISCOMPARE",
}


@dataclass(frozen=True)
class Sense:
    key: int
    asc: int = 0
    ascq: int = 0
    filemark: bool = False
    eom: bool = False
    ili: bool = False
    #: INFORMATION field when its VALID bit is set, else None.
    information: int | None = None
    valid: bool = True
    raw: bytes = b""

    def describe(self) -> str:
        bits = [n for n, on in (("FM", self.filemark), ("EOM", self.eom), ("ILI", self.ili)) if on]
        text = f"{KEY_NAMES.get(self.key, hex(self.key))} {self.asc:02x}/{self.ascq:02x}"
        if bits:
            text += " " + ",".join(bits)
        if self.information is not None:
            text += f" info={self.information}"
        if not self.valid:
            text += " (no usable sense data)"
        return text


def _signed32(b: bytes) -> int:
    return int.from_bytes(b, "big", signed=True)


def decode_sense(raw: bytes) -> Sense:
    """Decode sense bytes as returned by the device (no transport framing)."""
    raw = bytes(raw)
    info: int | None
    if len(raw) < 2:
        return Sense(NO_SENSE, valid=False, raw=raw)
    code = raw[0] & 0x7F
    if code in (0x70, 0x71):
        if len(raw) < 3:
            return Sense(NO_SENSE, valid=False, raw=raw)
        b2 = raw[2]
        return Sense(
            key=b2 & 0x0F,
            asc=raw[12] if len(raw) > 12 else 0,
            ascq=raw[13] if len(raw) > 13 else 0,
            filemark=bool(b2 & 0x80),
            eom=bool(b2 & 0x40),
            ili=bool(b2 & 0x20),
            information=_signed32(raw[3:7]) if raw[0] & 0x80 and len(raw) >= 7 else None,
            raw=raw,
        )
    if code in (0x72, 0x73):
        if len(raw) < 4:
            return Sense(NO_SENSE, valid=False, raw=raw)
        fm = eom = ili = False
        info = None
        end = min(len(raw), 8 + (raw[7] if len(raw) > 7 else 0))
        pos = 8
        while pos + 2 <= end:
            dtype, dlen = raw[pos], raw[pos + 1]
            body = raw[pos + 2 : pos + 2 + dlen]
            if dtype == 0x00 and len(body) >= 10 and body[0] & 0x80:
                info = int.from_bytes(body[2:10], "big", signed=True)
            elif dtype == 0x04 and len(body) >= 2:
                fm, eom, ili = bool(body[1] & 0x80), bool(body[1] & 0x40), bool(body[1] & 0x20)
            pos += 2 + dlen
        return Sense(raw[1] & 0x0F, raw[2], raw[3], fm, eom, ili, info, raw=raw)
    return Sense(NO_SENSE, valid=False, raw=raw)


def fixed_sense(
    key: int, asc: int = 0, ascq: int = 0, *, fm: bool = False, eom: bool = False,
    ili: bool = False, information: int | None = None,
) -> bytes:
    """Encode fixed-format sense (fake transports and tests)."""
    b = bytearray(18)
    b[0] = 0x70 | (0x80 if information is not None else 0)
    b[2] = (key & 0x0F) | (0x80 if fm else 0) | (0x40 if eom else 0) | (0x20 if ili else 0)
    if information is not None:
        b[3:7] = (information & 0xFFFFFFFF).to_bytes(4, "big")
    b[7] = 10
    b[12], b[13] = asc, ascq
    return bytes(b)
