"""Pack files: many blobs in one immutable object, self-describing.

Format ``VMKPACK1`` (version 1; magic values are never reused)::

    offset 0   magic  b"VMKPACK1"                         8 bytes
    8          blob payloads, back to back                (zstd frames or raw bytes)
    ...        trailer: one 50-byte entry per blob, in payload order:
                   id          32 bytes  keyed BLAKE3 of the raw chunk
                   codec        1 byte   0 raw, 1 zstd, 2 recipe (repository version 2)
                   level        1 byte   i8: the zstd level of a codec-1 blob; 0 = not recorded
                                         (raw and recipe blobs, and every blob written before
                                         levels were recorded: this byte was "kind", reserved,
                                         always 0 and ignored by every reader)
                   offset       8 bytes  u64 LE, from the start of the pack
                   stored_len   4 bytes  u32 LE
                   raw_len      4 bytes  u32 LE
    end-12     trailer length  u32 LE
    end-8      magic  b"VMKPEND1"

Format ``VMKPACK2`` (version 2, written in version-2 and version-3 repositories) has the same
layout with the magic ``b"VMKPACK2"``; only its name differs (below).

Format ``VMKPACK3`` (version 3, written in version-4 repositories: compression units) has the
same layout with the magic ``b"VMKPACK3"``, 58-byte trailer entries and the end magic
``b"VMKPEND3"`` (``b"VMKPENC3"`` encrypted) — the tail alone tells which entry size to parse::

                   id, codec, level, offset, stored_len, raw_len   as above (50 bytes)
                   unit_offset  4 bytes  u32 LE   codec 3: the piece's offset in the decoded unit
                   unit_len     4 bytes  u32 LE   codec 3: the decoded unit's length
                                                  (both 0 for codecs 0, 1, 2)

A **unit** (codec 3) is one payload — one zstd frame (sealed once in an encrypted repository)
of the new pieces of one image frame, back to back — listed by one entry per piece: every
entry of a unit has the unit's ``offset`` and ``stored_len`` (so several entries share one
payload) and the unit's ``level``; ``raw_len`` is the piece's length, and the piece is bytes
``[unit_offset, unit_offset + raw_len)`` of the decoded unit (``unit_len`` bytes).  Entries of a
unit are consecutive, in unit order.  The 50-byte entry has no room for the in-unit offset,
hence the new trailer version; ``VMKPACK1``/``VMKPACK2`` packs keep reading.

Names, under ``packs/<2 hex>/``:

* ``VMKPACK1``: the hex BLAKE3 (unkeyed) of the pack's bytes, so a check can verify a pack
  without any key.
* ``VMKPACK2``, ``VMKPACK3``: the hex BLAKE3 of ``magic || trailer (as stored) || footer`` —
  the pack's contents table, which names every blob by its keyed id with its offset, lengths
  and codec.  The writer no longer hashes every payload byte a second time (each chunk was
  already hashed for its id); a payload byte that changes is caught by the blob's keyed-id
  check (``check --read-data``; AEAD in an encrypted repository), not by the name.

**Levels.**  Since levels are recorded (same magics: the byte was reserved and ignored by every
reader, so older packs read as "not recorded" and older readers read newer packs), each zstd
blob's entry names the level it was compressed at; a pack's levels are those of its blobs
(:mod:`vmkeep.storage.pack_levels` summarises them for ``check`` and ``stats --levels``).  The
level is not needed to decode; it is covered by the pack's name (VMKPACK2) like the rest of the
table.

Re-uploading an identical pack is idempotent.  The trailer lets the index be rebuilt from packs
alone.  Packs are immutable; only prune deletes them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blake3 import blake3

from vmkeep.storage.codec import CODEC_RAW, CODEC_RECIPE, CODEC_UNIT, CODEC_ZSTD, MAX_BLOB_SIZE
from vmkeep.storage.errors import FormatError

if TYPE_CHECKING:
    from vmkeep.storage.backend import Backend
    from vmkeep.storage.crypto import ObjectCipher

MAGIC = b"VMKPACK1"
#: Magic of a version-2 pack (named by its contents table, see the module docstring).
MAGIC2 = b"VMKPACK2"
#: Magic of a version-3 pack (compression units, 58-byte entries; see the module docstring).
MAGIC3 = b"VMKPACK3"
MAGICS = (MAGIC, MAGIC2, MAGIC3)
END_MAGIC = b"VMKPEND1"
#: End magic of a pack in an encrypted repository (its trailer is ``nonce || AEAD``).
END_MAGIC_ENC = b"VMKPENC1"
#: End magics of a ``VMKPACK3`` pack (plain, encrypted).
END_MAGIC3 = b"VMKPEND3"
END_MAGIC3_ENC = b"VMKPENC3"
TRAILER_AD = b"vmkeep pack trailer v1"
ENTRY = struct.Struct("<32sBbQII")  # after codec: level (signed), was "kind"
#: A ``VMKPACK3`` entry: :data:`ENTRY`, then the piece's offset in its unit and the unit's length.
ENTRY3 = struct.Struct("<32sBbQIIII")
FOOTER = struct.Struct("<I8s")
#: The entry byte meaning "level not recorded" (raw and recipe blobs; packs from before levels).
NO_LEVEL = 0
#: Codecs a blob entry may name (see :mod:`vmkeep.storage.codec`); units only in ``VMKPACK3``.
CODECS = frozenset({CODEC_RAW, CODEC_ZSTD, CODEC_RECIPE})
CODECS3 = CODECS | {CODEC_UNIT}


@dataclass(frozen=True, slots=True)
class PackEntry:
    blob_id: bytes
    codec: int
    offset: int
    stored_length: int
    raw_length: int
    #: zstd level of a codec-1 blob or of a codec-3 piece's unit, ``None`` when not recorded
    level: int | None = None
    #: codec 3 (a piece inside a unit): the piece's offset in the decoded unit, and the decoded
    #: unit's length; 0 for every other codec
    unit_offset: int = 0
    unit_length: int = 0


def pack_key(pack_id: bytes) -> str:
    hexid = pack_id.hex()
    return f"packs/{hexid[:2]}/{hexid}"


def pack_id_from_key(key: str) -> bytes:
    return bytes.fromhex(key.rsplit("/", 1)[-1])


_PACK_KEY = re.compile(r"packs/([0-9a-f]{2})/(\1[0-9a-f]{62})")


def list_packs(
    backend: Backend, strays: list[str] | None = None
) -> Iterator[tuple[str, int]]:
    """``(key, size)`` of every pack object: keys of the exact form ``packs/<2 hex>/<64 hex>``
    (the first two digits repeated).  Anything else under ``packs/`` — a file someone copied
    or restored there — is no pack: left out (readers never take its name for one) and left
    alone (prune never deletes it); listed in ``strays`` when given (``check`` reports them)."""
    for key, size in backend.list("packs"):
        if is_pack_key(key):
            yield key, size
        elif strays is not None:
            strays.append(key)


def is_pack_key(key: str) -> bool:
    """Whether ``key`` names a pack (see :func:`list_packs`)."""
    return _PACK_KEY.fullmatch(key) is not None


class PackBuilder:
    """Accumulates blobs in memory until :meth:`finish`.  Not thread-safe (one owner).

    Payloads are kept as the caller's buffers (no copy); :meth:`finish_parts` returns them with
    the trailer as a list of buffers for a gathering write (``os.writev``), :meth:`finish` as one
    ``bytes``.  The caller must not modify a payload after adding it.
    """

    def __init__(self, version: int = 1) -> None:
        if version not in (1, 2, 3):
            raise ValueError(f"unknown pack version {version}")
        self.magic = {1: MAGIC, 2: MAGIC2, 3: MAGIC3}[version]
        self.parts: list[bytes | memoryview] = [self.magic]
        self.size = len(self.magic)
        self.entries: list[PackEntry] = []

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        blob_id: bytes,
        codec: int,
        payload: bytes | memoryview,
        raw_length: int,
        level: int | None = None,
    ) -> PackEntry:
        """Append a blob; ``level`` is recorded for a zstd blob (codec 1) only, and must fit
        the entry's signed byte."""
        if codec == CODEC_UNIT:
            raise ValueError("units are added with add_unit")
        stored = memoryview(payload).nbytes
        level = _level(codec, level)
        entry = PackEntry(blob_id, codec, self.size, stored, raw_length, level)
        self.parts.append(payload)
        self.size += stored
        self.entries.append(entry)
        return entry

    def add_unit(
        self,
        members: list[tuple[bytes, int, int]],
        payload: bytes | memoryview,
        unit_length: int,
        level: int | None = None,
    ) -> list[PackEntry]:
        """Append one compression unit (``VMKPACK3`` only): ``payload`` is its stored form,
        ``members`` its pieces as ``(id, offset in the decoded unit, length)`` in unit order.
        One entry per member, all naming the one payload."""
        if self.magic != MAGIC3:
            raise ValueError("compression units need a VMKPACK3 pack")
        if not members or not 0 < unit_length <= MAX_BLOB_SIZE:
            raise ValueError("a unit holds at least one piece and at most 64 MiB")
        stored = memoryview(payload).nbytes
        level = _level(CODEC_UNIT, level)
        out = []
        for blob_id, unit_offset, length in members:
            if length <= 0 or unit_offset < 0 or unit_offset + length > unit_length:
                raise ValueError(f"piece [{unit_offset}, +{length}) outside its unit")
            out.append(
                PackEntry(blob_id, CODEC_UNIT, self.size, stored, length, level, unit_offset,
                          unit_length)
            )
        self.parts.append(payload)
        self.size += stored
        self.entries.extend(out)
        return out

    def finish_parts(
        self, cipher: ObjectCipher | None = None
    ) -> tuple[bytes, list[bytes | memoryview], list[PackEntry]]:
        """Return ``(pack_id, parts, entries)``: the pack is ``b"".join(parts)``; its id is the
        BLAKE3 of those bytes, hashed part by part (version 1), or of the magic, trailer and
        footer only (version 2).  The builder must not be
        reused.  With a ``cipher`` the trailer is encrypted (payloads were encrypted by the
        caller)."""
        def common(e: PackEntry) -> tuple[bytes, int, int, int, int, int]:
            level = NO_LEVEL if e.level is None else e.level
            return e.blob_id, e.codec, level, e.offset, e.stored_length, e.raw_length

        if self.magic == MAGIC3:
            trailer = b"".join(
                ENTRY3.pack(*common(e), e.unit_offset, e.unit_length) for e in self.entries
            )
        else:
            trailer = b"".join(ENTRY.pack(*common(e)) for e in self.entries)
        if cipher is not None:
            trailer = cipher.seal(trailer, TRAILER_AD)
        footer = FOOTER.pack(len(trailer), _end_magic(self.magic, cipher is not None))
        parts, self.parts = [*self.parts, trailer, footer], []
        hasher = blake3()
        if self.magic != MAGIC:  # named by its contents table
            hasher.update(self.magic + trailer + footer)
            return hasher.digest(), parts, self.entries
        for part in parts:
            hasher.update(part)
        return hasher.digest(), parts, self.entries

    def finish(self, cipher: ObjectCipher | None = None) -> tuple[bytes, bytes, list[PackEntry]]:
        """Return ``(pack_id, pack_bytes, entries)``; see :meth:`finish_parts`."""
        pack_id, parts, entries = self.finish_parts(cipher)
        return pack_id, b"".join(parts), entries


def _level(codec: int, level: int | None) -> int | None:
    """The level an entry records: zstd blobs and units only; must fit a signed byte."""
    if codec not in (CODEC_ZSTD, CODEC_UNIT) or level == NO_LEVEL:
        return None
    if level is not None and not -128 <= level <= 127:
        raise ValueError(f"zstd level {level} does not fit a pack entry")
    return level


def _end_magic(magic: bytes, encrypted: bool) -> bytes:
    if magic == MAGIC3:
        return END_MAGIC3_ENC if encrypted else END_MAGIC3
    return END_MAGIC_ENC if encrypted else END_MAGIC


def parse_pack(data: bytes, where: str, cipher: ObjectCipher | None = None) -> list[PackEntry]:
    """Parse and bounds-check a whole pack's trailer (decrypting it with ``cipher`` in an
    encrypted repository).  Raises ``FormatError`` / ``DataCorrupt`` when malformed."""
    if not data.startswith(MAGICS):
        raise FormatError(where, "not a vmkeep pack")
    end = data[-len(END_MAGIC) :]
    if data.startswith(MAGIC3) != (end in (END_MAGIC3, END_MAGIC3_ENC)):
        raise FormatError(where, "pack magic and footer disagree")
    return parse_trailer(data, len(data), where, cipher)


def pack_digest(data: bytes) -> bytes:
    """The name (as bytes) a whole pack must have: see the module docstring.  A pack whose
    footer is unreadable gets the BLAKE3 of all its bytes (which then will not match)."""
    magic = data[: len(MAGIC)]
    if magic in (MAGIC2, MAGIC3) and len(data) >= len(magic) + FOOTER.size:
        trailer_len, _end = FOOTER.unpack_from(data, len(data) - FOOTER.size)
        start = len(data) - FOOTER.size - trailer_len
        if start >= len(magic):
            return blake3(magic + data[start:]).digest()
    return blake3(data).digest()


#: Bytes :func:`read_trailer` fetches from a pack's end in one request (most trailers fit).
TAIL_READ = 64 * 1024


def parse_trailer(
    tail: bytes, pack_size: int, where: str, cipher: ObjectCipher | None = None
) -> list[PackEntry]:
    """Parse the trailer from ``tail``, the last ``len(tail)`` bytes of a pack of
    ``pack_size`` bytes (the whole pack works too).  Every entry is bounds-checked against the
    pack: payloads lie between the magic and the trailer, lengths at most ``MAX_BLOB_SIZE``,
    codec known.  Raises ``FormatError`` (``NeedMore`` when ``tail`` is too short to hold the
    trailer) / ``DataCorrupt`` (encrypted trailer fails authentication)."""
    if pack_size < len(MAGIC) + FOOTER.size or len(tail) < FOOTER.size:
        raise FormatError(where, "not a vmkeep pack")
    trailer_len, end = FOOTER.unpack_from(tail, len(tail) - FOOTER.size)
    if end not in ((END_MAGIC, END_MAGIC3) if cipher is None else (END_MAGIC_ENC, END_MAGIC3_ENC)):
        raise FormatError(where, "bad pack footer (or an encrypted pack without the key)")
    units = end in (END_MAGIC3, END_MAGIC3_ENC)
    layout, codecs = (ENTRY3, CODECS3) if units else (ENTRY, CODECS)
    trailer_start = pack_size - FOOTER.size - trailer_len
    if trailer_start < len(MAGIC):
        raise FormatError(where, "pack trailer larger than the pack")
    if trailer_len + FOOTER.size > len(tail):
        raise NeedMore(where, trailer_len + FOOTER.size)
    base = len(tail) - FOOTER.size - trailer_len
    trailer = tail[base : base + trailer_len]
    if cipher is not None:
        trailer = cipher.open(trailer, TRAILER_AD, where)
    if len(trailer) % layout.size:
        raise FormatError(where, "bad pack trailer length")
    entries = []
    for pos in range(0, len(trailer), layout.size):
        fields = layout.unpack_from(trailer, pos)
        blob_id, codec, level, offset, stored, raw = fields[:6]
        unit_offset, unit_length = fields[6:] if units else (0, 0)
        if offset < len(MAGIC) or offset + stored > trailer_start or raw > MAX_BLOB_SIZE:
            raise FormatError(where, f"blob entry out of bounds at trailer offset {pos}")
        if codec not in codecs:
            raise FormatError(where, f"unknown codec {codec} at trailer offset {pos}")
        if codec == CODEC_UNIT:
            if raw <= 0 or not unit_offset + raw <= unit_length <= MAX_BLOB_SIZE:
                raise FormatError(where, f"piece outside its unit at trailer offset {pos}")
        elif unit_offset or unit_length:
            raise FormatError(where, f"unit fields on a codec-{codec} entry at offset {pos}")
        recorded = level if codec in (CODEC_ZSTD, CODEC_UNIT) and level != NO_LEVEL else None
        entries.append(
            PackEntry(blob_id, codec, offset, stored, raw, recorded, unit_offset, unit_length)
        )
    return entries


class NeedMore(FormatError):
    """Malformed repository data in {}: {}

    Internal to :func:`read_trailer`: the tail given to :func:`parse_trailer` is shorter than
    the trailer (``needed`` bytes from the end hold it)."""

    def __init__(self, where: str, needed: int) -> None:
        super().__init__(where, f"trailer needs the last {needed} bytes")
        self.needed = needed


def read_trailer(
    backend: Backend, pack_id: bytes, pack_size: int, cipher: ObjectCipher | None = None
) -> list[PackEntry]:
    """A pack's trailer by ranged reads (one for most packs, two for very large trailers),
    without reading its payloads; see :func:`parse_trailer`."""
    key = pack_key(pack_id)
    want = min(pack_size, TAIL_READ)
    tail = backend.get(key, pack_size - want, want)
    if len(tail) != want:
        raise FormatError(key, f"pack is shorter than its listed size {pack_size}")
    try:
        return parse_trailer(tail, pack_size, key, cipher)
    except NeedMore as more:
        tail = backend.get(key, pack_size - more.needed, more.needed)
        return parse_trailer(tail, pack_size, key, cipher)
