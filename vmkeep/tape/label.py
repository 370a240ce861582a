"""The tape label: file 0 of every vmkeep cartridge, a one-member pax archive.

The label file is one block of exactly :data:`LABEL_BLOCK` bytes (64 KiB, which every drive
accepts; readers need no block size to read it) holding a pax archive with the member
``.vmkeep-tape/label.json``::

    {"format": "vmkeep-tape", "version": 3, "tape_id": "VMK001L6", "pool": "daily",
     "repository_id": "…" | null, "sequence": 3, "labelled_at": "2026-12-02T08:00:00+00:00",
     "block_size": 1048576}

``version`` 1: the cartridge holds data files only; 2: each data file is followed by a small
catalog file (its catalog record), which ``tape scan`` reads instead of the data; 3: as 2, and
members that are version-2 packs carry an XXH3-128 digest record instead of BLAKE3
(:mod:`vmkeep.tape.pax`).

``tape_id`` is the barcode (or an id chosen at labelling for libraries without a reader);
``repository_id`` is set when the first data file is written (the label is rewritten then, as a
cartridge holds one repository's objects); ``sequence`` numbers the cartridges of a pool in the
order they were started; ``block_size`` is the block length of every data file on the tape.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from typing import Any

from vmkeep.scsi.ssc import TapeDrive
from vmkeep.tape.errors import HostileTape
from vmkeep.tape.pax import META_DIR, PaxWriter, read_members

LABEL_BLOCK = 64 * 1024
LABEL_NAME = f"{META_DIR}/label.json"
FORMAT, VERSION = "vmkeep-tape", 3
#: Label versions this code reads: 1 (data files only), 2 (each data file followed by its
#: catalog file), 3 (as 2, XXH3 digest records for version-2 packs; docs/format.md "Tape").
READS = (1, 2, 3)


@dataclass
class Label:
    tape_id: str
    pool: str
    labelled_at: str
    block_size: int
    repository_id: str | None = None
    sequence: int = 0
    #: tape format version of the cartridge (what its files look like): new labels get
    #: :data:`VERSION`; appending keeps the cartridge's own
    version: int = VERSION

    @property
    def has_catalog_files(self) -> bool:
        """Version 2 on: each data file is followed by a catalog file (``tape scan``'s fast
        path)."""
        return self.version >= 2

    @property
    def has_xxh3(self) -> bool:
        """Version 3 on: version-2 packs get ``VMKEEP.xxh3`` records (older cartridges,
        appended to, keep BLAKE3 records only)."""
        return self.version >= 3

    def encode(self) -> bytes:
        body = json.dumps({"format": FORMAT, **asdict(self)}, indent=1)
        buf = io.BytesIO()
        w = PaxWriter(buf, 0)
        w.add(LABEL_NAME, body.encode())
        w.close()
        data = buf.getvalue()
        if len(data) > LABEL_BLOCK:
            raise ValueError("label too large")
        return data + bytes(LABEL_BLOCK - len(data))

    @classmethod
    def decode(cls, block: bytes) -> Label:
        for name, data, _ in read_members(io.BytesIO(block)):
            if name != LABEL_NAME:
                break
            try:
                obj: dict[str, Any] = json.loads(data)
            except ValueError:
                raise HostileTape("label is not JSON") from None
            if obj.get("format") != FORMAT or obj.get("version") not in READS:
                raise HostileTape(
                    f"unknown label format {obj.get('format')!r} {obj.get('version')!r}"
                )
            try:
                return cls(
                    tape_id=str(obj["tape_id"]), pool=str(obj["pool"]),
                    labelled_at=str(obj["labelled_at"]), block_size=int(obj["block_size"]),
                    repository_id=obj.get("repository_id"), sequence=int(obj.get("sequence", 0)),
                    version=int(obj["version"]),
                )
            except (KeyError, TypeError, ValueError):
                raise HostileTape("label misses fields") from None
        raise HostileTape("file 0 is not a vmkeep tape label")


def write_label(drive: TapeDrive, label: Label) -> None:
    """Rewind and write the label file (everything after it on the tape becomes unreadable)."""
    drive.rewind()
    drive.write_block(label.encode())
    drive.write_filemarks(1)


def read_label(drive: TapeDrive) -> Label:
    """Rewind and read file 0; the position afterwards is the start of file 1."""
    drive.rewind()
    block = drive.read_block(LABEL_BLOCK)
    label = Label.decode(block)
    drive.space_filemarks(1)
    return label
