"""Catalog files: the small tape file after each data file (tape format version 2).

On a cartridge labelled version 2, every data file ``n`` that was closed normally is followed
by tape file ``n + 1``: a pax archive (same block size as the data files, zero-padded) with the
one member ``.vmkeep-tape/<tape id>-<n:05d>.catalog.json`` — the data file's catalog record
(docs/format.md "Tape"), with its ``VMKEEP.b3`` record like every member.  ``tape scan`` reads
the label, the first block of each data file (the repository's ``config`` and keys, and to
tell data from catalog files) and these catalog files, and spaces over the data with SPACE
filemarks; a data file whose catalog file is missing (the job stopped in between, a volume
overflow), unreadable or not about that file is read in full instead.

The record is the same as the data file's own trailer, except ``bytes``, known only once the
data file is closed.
"""

from __future__ import annotations

import json
from typing import Any

from vmkeep.scsi.ssc import TapeDrive
from vmkeep.tape.catalog import FileRecord
from vmkeep.tape.errors import HostileTape
from vmkeep.tape.pax import META_DIR, PaxWriter
from vmkeep.tape.stream import BlockWriter

SUFFIX = ".catalog.json"


def member_name(tape_id: str, fileno: int) -> str:
    return f"{META_DIR}/{tape_id}-{fileno:05d}{SUFFIX}"


def is_member(name: str) -> bool:
    return name.startswith(f"{META_DIR}/") and name.endswith(SUFFIX)


def write(drive: TapeDrive, block_size: int, rec: FileRecord, mtime: float) -> bool:
    """Write the catalog file of data file ``rec.file`` (the drive is just after that file's
    filemark) and its filemark; True at early warning.  Drive errors raise."""
    bw = BlockWriter(drive, block_size, depth=2)
    try:
        pax = PaxWriter(bw, mtime)
        pax.add(member_name(rec.tape_id, rec.file),
                json.dumps(rec.to_json(), sort_keys=True).encode())
        pax.close()
        bw.close()
    except BaseException:
        bw.abort()
        raise
    return bw.early_warning


def parse(name: str, data: bytes, tape_id: str, data_file: int) -> FileRecord:
    """The record in a catalog file, checked to be about data file ``data_file`` of ``tape_id``;
    HostileTape otherwise (the caller then reads the data file itself)."""
    if name != member_name(tape_id, data_file):
        raise HostileTape(f"catalog file {name!r} where {member_name(tape_id, data_file)!r} "
                          "was expected")
    try:
        obj: Any = json.loads(data)
        rec = FileRecord.from_json(obj)
    except (ValueError, TypeError):
        raise HostileTape(f"bad catalog record {name!r}") from None
    if rec.tape_id != tape_id or rec.file != data_file or not isinstance(rec.objects, dict):
        raise HostileTape(f"catalog record {name!r} is about {rec.tape_id} file {rec.file}")
    return rec
