"""``vmkeep tape restore-image``: a disk image straight from tape, no disk repository needed.

Streaming, in two phases over the tape files :func:`~vmkeep.tape.restore.files_for_point`
names:

1. the file holding the point's manifest: ``config``, ``config.sealed`` and ``keys/*`` (the
   first members of every tape file) and the manifest (the first member of its point) are
   read — only those few kilobytes go to a private temporary folder, so the repository's
   codecs, cipher and keyed chunk ids can be used — and reading stops there;
2. every file with the point's packs, in tape order: each pack's trailer is parsed, each blob
   the chosen disk needs is decrypted, decompressed, checked against its keyed id and written
   with ``pwrite`` at every offset the chunk table lists (packs arrive in any order).

Zero chunks stay holes.  The image is written to a new temporary file beside the target
(``.<name>.partial-…``, created exclusively) and renamed over it only when every chunk arrived
and the file was fsynced; otherwise the partial file is removed and
:class:`~vmkeep.tape.errors.TapeJobError` names how many chunks were missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from vmkeep.errors import UsageError
from vmkeep.storage.codec import CODEC_RECIPE, CODEC_UNIT, ZERO_ID, decode_recipe
from vmkeep.storage.index import BlobLocation
from vmkeep.storage.manifest import ChunkTable, decode_point, point_key
from vmkeep.storage.pack import parse_pack
from vmkeep.storage.repository import Repository
from vmkeep.tape.catalog import FileRecord
from vmkeep.tape.errors import TapeJobError
from vmkeep.tape.library import Library
from vmkeep.tape.pax import read_members
from vmkeep.tape.restore import _resolve, check_label, files_for_point, mount, position
from vmkeep.tape.stream import BlockReader

_BASE = ("config", "config.sealed", "keys/")


def _needed(table: ChunkTable) -> dict[bytes, list[tuple[int, int]]]:
    """blob id -> [(offset, length)] of every non-zero chunk of the disk."""
    out: dict[bytes, list[tuple[int, int]]] = {}
    for i in range(len(table)):
        if not table.is_zero(i):
            out.setdefault(table.blob_id(i), []).append((table.offsets[i], table.lengths[i]))
    return out


@contextmanager
def _on_tape(
    lib: Library, di: int, drive: Any, tape: str, files: list[FileRecord]
) -> Iterator[Any]:
    """The cartridge ``tape`` loaded, its label checked against the catalog's ``files``."""
    with lib.cartridge_lock(tape):
        try:
            label = mount(lib, di, drive, tape)
            check_label(label, tape, files[0].repository_id, files)
            yield label
        finally:
            lib.unload(di)


def restore_image_from_tape(
    lib: Library,
    records: list[FileRecord],
    ref: str,
    target: str | os.PathLike[str],
    *,
    disk: int = 0,
    drive_index: int | None = None,
    password: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Stream disk ``disk`` of point ``ref`` from tape into the file ``target``.  An existing
    target is replaced only with ``overwrite`` and only when it is a regular file."""
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise UsageError(f"{target} exists and is not a regular file; not replaced")
    if target.exists() and not overwrite:
        raise UsageError(f"{target} exists (use --overwrite to replace it)")
    point = _resolve(records, ref)
    wanted, files = files_for_point(records, point)
    mkey = point_key(point)
    mfile = next(f for f, keys in wanted.items() if mkey in keys)
    meta = Path(tempfile.mkdtemp(prefix=".vmkeep-tape-meta-"))
    partial: Path | None = None
    report: dict[str, Any] = {"point": point, "disk": disk, "target": str(target),
                              "cartridges": [], "files": [], "bytes_restored": 0}
    try:
        with ExitStack() as stack:
            di = stack.enter_context(lib.drive_lock(drive_index))
            drive = lib.open_drive(di)
            stack.callback(drive.close)
            # phase 1: config, keys and the manifest
            with _on_tape(lib, di, drive, mfile[0], files) as label:
                position(drive, mfile[1], next(r.start_block for r in files
                                               if (r.tape_id, r.file) == mfile))
                for name, data, _ in read_members(BlockReader(drive, label.block_size)):
                    if name.startswith(_BASE):
                        (meta / name).parent.mkdir(parents=True, exist_ok=True)
                        (meta / name).write_bytes(data)
                    elif name == mkey:
                        (meta / "manifests").mkdir(exist_ok=True)
                        (meta / mkey).write_bytes(data)
                        break
            repo = Repository.open(str(meta), password=password)
            pt = decode_point(repo.backend.get(mkey), point)
            if disk not in pt.chunks:
                raise UsageError(f"restore point {point[:12]} has no disk {disk}")
            size = next(d.size for d in pt.disks if d.index == disk)
            needed = _needed(pt.chunks[disk])
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
            partial = Path(name)
            stack.callback(os.close, fd)
            # phase 2: the packs, file by file in tape order.  A frame stored as a recipe
            # (repository version 2) adds its pieces to ``needed``; tape copies write recipe
            # packs first, but a piece met before its recipe (another copy's order) needs a
            # second pass over the packs.
            frames: list[tuple[int, int, bytes]] = []
            for _pass in range(2):
                for tape in sorted({t for t, _ in wanted}):
                    with _on_tape(lib, di, drive, tape, files) as label:
                        for rec in (r for r in files if r.tape_id == tape):
                            packs = {k for k in wanted[(tape, rec.file)]
                                     if k.startswith("packs/")}
                            if not packs:
                                continue
                            position(drive, rec.file, rec.start_block)
                            reader = BlockReader(drive, label.block_size)
                            for name, data, _ in read_members(reader, packs.__contains__):
                                report["bytes_restored"] += _write_pack(
                                    repo, name, data, needed, fd, frames
                                )
                            if not _pass:
                                report["files"].append({"tape": tape, "file": rec.file})
                    if not _pass:
                        report["cartridges"].append(tape)
                if not needed:
                    break
            if needed:
                raise TapeJobError(f"{len(needed)} chunk(s) of disk {disk} of {point[:12]} "
                                   "were not found on tape")
            os.ftruncate(fd, size)  # before the check: a frame may end in zero pieces
            _check_frames(repo, fd, frames)
            os.fsync(fd)
        assert partial is not None
        os.replace(partial, target)
        return report
    except BaseException:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(meta, ignore_errors=True)


def _check_frames(repo: Repository, fd: int, frames: list[tuple[int, int, bytes]]) -> None:
    """Every frame written from a recipe's pieces must hash to its id (a recipe listing the
    wrong, each authentic, pieces is caught here).  Version 5 checks the recipe itself against
    the frame's id instead (:meth:`Repository.check_recipe_id`): ``frames`` is then empty."""
    for offset, length, blob_id in frames:
        if repo.hasher.chunk_id(os.pread(fd, length, offset)) != blob_id:
            raise TapeJobError(f"the chunk at offset {offset} fails its hash check")


def _write_pack(
    repo: Repository,
    name: str,
    data: bytes,
    needed: dict[bytes, list[tuple[int, int]]],
    fd: int,
    frames: list[tuple[int, int, bytes]],
) -> int:
    written = 0
    view = memoryview(data)
    entries = parse_pack(data, name, repo.cipher)
    units: dict[int, bytes] = {}  # compression units (version 4): decoded once per pack
    for entry in entries:
        places = needed.pop(entry.blob_id, None)
        if places is None:
            continue
        stored = view[entry.offset : entry.offset + entry.stored_length]
        if entry.codec == CODEC_UNIT:
            unit = units.get(entry.offset)
            if unit is None:
                members = [e.blob_id for e in entries if e.offset == entry.offset]
                unit = units[entry.offset] = repo.decode_unit(
                    stored, entry.unit_length, name, members)
            loc = BlobLocation(b"", entry.offset, entry.stored_length, entry.raw_length,
                               entry.codec, entry.unit_offset, entry.unit_length)
            raw: bytes | memoryview = repo.unit_piece(entry.blob_id, unit, loc, name)
            for offset, length in places:
                if length != len(raw):
                    raise TapeJobError(f"chunk at {offset} has {len(raw)} bytes, "
                                       f"expected {length}")
                os.pwrite(fd, raw, offset)
                written += length
            continue
        if entry.codec == CODEC_RECIPE:  # the frame's pieces are needed instead
            payload = repo.open_recipe(entry.blob_id, stored, name)  # version 5: id checked
            for offset, length in places:
                if length != entry.raw_length:
                    raise TapeJobError(f"chunk at {offset} has {entry.raw_length} bytes, "
                                       f"expected {length}")
                if not repo.config.recipe_ids:  # versions 2-4: hash the frame once written
                    frames.append((offset, length, entry.blob_id))
                pos = offset
                for piece, plen in decode_recipe(payload, entry.raw_length, name):
                    if piece != ZERO_ID:
                        needed.setdefault(piece, []).append((pos, plen))
                    pos += plen
            continue
        raw = repo.decode_payload(entry.blob_id, entry.codec, stored, entry.raw_length, name)
        for offset, length in places:
            if length != len(raw):
                raise TapeJobError(f"chunk at {offset} has {len(raw)} bytes, expected {length}")
            os.pwrite(fd, raw, offset)
            written += length
    return written
