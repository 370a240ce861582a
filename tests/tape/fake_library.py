"""A library of fake cartridges (:class:`~tests.tape.fake_transport.FakeTape`) behind the real
:class:`~vmkeep.tape.library.Library` bookkeeping (media state, locks): for what tgt cannot do,
such as VOLUME OVERFLOW without early warning."""

from __future__ import annotations

from typing import Any

from tests.tape.fake_transport import FakeTape
from vmkeep.scsi import smc
from vmkeep.scsi.smc import Element
from vmkeep.scsi.ssc import TapeDrive
from vmkeep.tape.library import Library, LibraryConfig


class _DriveSlot:
    """The transport of one drive: forwards to whatever cartridge is loaded."""

    def __init__(self, lib: FakeLibrary, index: int) -> None:
        self.lib, self.index, self.url = lib, index, f"fake://drive{index}"

    def execute(self, cdb: bytes, data_out: Any = None, data_in_len: int = 0,
                timeout: float = 60.0) -> tuple[bytes, int]:
        code = self.lib.loaded.get(self.index)
        if code is None:
            from vmkeep.scsi.errors import check_condition
            from vmkeep.scsi.sense import NOT_READY, decode_sense, fixed_sense

            raise check_condition("fake", decode_sense(fixed_sense(NOT_READY, 0x3A, 0)))
        return self.lib.tapes[code].execute(cdb, data_out, data_in_len, timeout)

    def close(self) -> None:
        pass


class FakeLibrary(Library):
    def __init__(self, tapes: dict[str, FakeTape], drives: int = 1) -> None:
        super().__init__(LibraryConfig("fake", "fake://changer", ["fake://d"] * drives))
        self.tapes = tapes
        self.loaded: dict[int, str] = {}

    def open_drive(self, index: int) -> TapeDrive:
        return TapeDrive(_DriveSlot(self, index), f"fake:drive{index}")

    def elements(self) -> dict[int, list[Element]]:
        inside = set(self.loaded.values())
        slots = [Element(smc.SLOT, 1000 + i, code not in inside, code if code not in inside
                         else None) for i, code in enumerate(sorted(self.tapes))]
        drives = [Element(smc.DRIVE, 500 + i, i in self.loaded, self.loaded.get(i))
                  for i in range(len(self.cfg.drives))]
        return {smc.SLOT: slots, smc.DRIVE: drives, smc.MAIL: [], smc.PICKER: []}

    def load(self, barcode: str, drive: int) -> None:
        self.loaded[drive] = barcode
        self.tapes[barcode].pos = 0

    def unload(self, drive: int, to: int | None = None) -> str | None:
        return self.loaded.pop(drive, None)

    def close(self) -> None:
        pass
