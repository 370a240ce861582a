"""SMC (media changer) commands: element status per type with barcodes, MOVE MEDIUM.

Elements: the picker (medium transport, type 1), storage slots (2), import/export "mail" slots
(3) and drives (4).  READ ELEMENT STATUS is issued *per element type* (tgt answers a request for
all types with a malformed page) with volume tags and, for drives, device identifiers (DVCID)
so drives can be matched to drive devices by serial number.  Parsing tolerates a truncated last
descriptor (tgt drops its final 8 bytes): fields that are cut off read as absent.

:meth:`Changer.move` refuses to move to a full element or from an empty one *before* sending
anything (the changer would refuse too, with less helpful sense), and re-reads the status
afterwards to confirm the move happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmkeep.scsi.errors import ScsiError
from vmkeep.scsi.transport import LONG_TIMEOUT, SHORT_TIMEOUT, Transport

PICKER, SLOT, MAIL, DRIVE = 1, 2, 3, 4
TYPE_NAMES = {PICKER: "picker", SLOT: "slot", MAIL: "mail", DRIVE: "drive"}


class ChangerError(ScsiError):
    """Changer: {}"""


@dataclass(frozen=True)
class Element:
    type: int
    address: int
    full: bool
    barcode: str | None = None
    source: int | None = None
    identifier: str | None = None
    exception: bool = False

    @property
    def kind(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind, "address": self.address, "full": self.full,
            "barcode": self.barcode, "source": self.source, "identifier": self.identifier,
        }


def _tag(raw: bytes) -> str | None:
    if len(raw) < 32:
        return None
    text = raw[:32].decode("ascii", "replace").strip(" \0")
    return text or None


def parse_element_status(data: bytes) -> list[Element]:
    """Parse a READ ELEMENT STATUS answer (SMC-3 §6.11) into elements."""
    if len(data) < 8:
        raise ChangerError("short READ ELEMENT STATUS answer")
    total = min(len(data), 8 + int.from_bytes(data[5:8], "big"))
    out: list[Element] = []
    pos = 8
    while pos + 8 <= total:
        etype, flags = data[pos] & 0x0F, data[pos + 1]
        dlen = int.from_bytes(data[pos + 2 : pos + 4], "big")
        page_end = min(total, pos + 8 + int.from_bytes(data[pos + 5 : pos + 8], "big"))
        pvoltag, avoltag = bool(flags & 0x80), bool(flags & 0x40)
        d = pos + 8
        if dlen < 12:
            raise ChangerError(f"element descriptor length {dlen} too small")
        while d + 12 <= page_end:
            desc = data[d : min(d + dlen, page_end)]
            barcode = _tag(desc[12:48]) if pvoltag else None
            ident_at = 12 + (36 if pvoltag else 0) + (36 if avoltag else 0)
            ident = None
            if len(desc) >= ident_at + 4:
                n = desc[ident_at + 3]
                raw = desc[ident_at + 4 : ident_at + 4 + n]
                ident = raw.decode("ascii", "replace").strip(" \0") or None
            out.append(Element(
                type=etype,
                address=int.from_bytes(desc[0:2], "big"),
                full=bool(desc[2] & 0x01),
                barcode=barcode if desc[2] & 0x01 else None,
                source=int.from_bytes(desc[10:12], "big") if desc[9] & 0x80 else None,
                identifier=ident,
                exception=bool(desc[2] & 0x04),
            ))
            d += dlen
        pos = page_end
    return out


class Changer:
    """A media changer behind a transport."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport

    def test_unit_ready(self) -> None:
        self.t.execute(bytes(6))

    def elements(self, etype: int, dvcid: bool = False) -> list[Element]:
        alloc = 0xFFFF
        cdb = bytes([0xB8, 0x10 | etype, 0, 0, 0xFF, 0xFF, 0x01 if dvcid else 0]) + alloc.to_bytes(
            3, "big"
        ) + bytes([0, 0, 0])
        data, _ = self.t.execute(cdb, data_in_len=alloc, timeout=SHORT_TIMEOUT)
        return [e for e in parse_element_status(data) if e.type == etype]

    def inventory(self) -> dict[int, list[Element]]:
        """Every element, one READ ELEMENT STATUS per type."""
        out = {}
        for etype in (PICKER, SLOT, MAIL, DRIVE):
            try:
                out[etype] = self.elements(etype, dvcid=etype == DRIVE)
            except ScsiError:
                if etype == DRIVE:
                    out[etype] = self.elements(etype)
                elif etype in (MAIL, PICKER):
                    out[etype] = []
                else:
                    raise
        return out

    def picker(self) -> int:
        p = self.elements(PICKER)
        return p[0].address if p else 0

    def move(self, source: int, dest: int) -> None:
        """MOVE MEDIUM from one element to another; verified by re-reading the status."""
        status = {e.address: e for es in self.inventory().values() for e in es}
        if source not in status or dest not in status:
            raise ChangerError(f"no element {source if source not in status else dest}")
        if not status[source].full:
            raise ChangerError(f"element {source} is empty")
        if status[dest].full:
            raise ChangerError(f"element {dest} is full ({status[dest].barcode or 'no barcode'})")
        cdb = bytes([0xA5, 0]) + self.picker().to_bytes(2, "big") + source.to_bytes(2, "big") + \
            dest.to_bytes(2, "big") + bytes(4)
        self.t.execute(cdb, timeout=LONG_TIMEOUT)
        after = {e.address: e for es in self.inventory().values() for e in es}
        if after[source].full or not after[dest].full:
            raise ChangerError(f"move {source} → {dest} reported success but did not happen")

    def close(self) -> None:
        self.t.close()
