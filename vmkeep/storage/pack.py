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

Format ``VMKPACK2`` (version 2, written in version-2 repositories) has the same layout with the
magic ``b"VMKPACK2"``; only its name differs (below).

Names, under ``packs/<2 hex>/``:

* ``VMKPACK1``: the hex BLAKE3 (unkeyed) of the pack's bytes, so a check can verify a pack
  without any key.
* ``VMKPACK2``: the hex BLAKE3 of ``b"VMKPACK2" || trailer (as stored) || footer`` — the pack's
  contents table, which names every blob by its keyed id with its offset, lengths and codec.  The
  writer no longer hashes every payload byte a second time (each chunk was already hashed for
  its id); a payload byte that changes is caught by the blob's keyed-id check (``check
  --read-data``; AEAD in an encrypted repository), not by the name.

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

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blake3 import blake3

from vmkeep.storage.codec import CODEC_RAW, CODEC_RECIPE, CODEC_ZSTD, MAX_BLOB_SIZE
from vmkeep.storage.errors import FormatError

if TYPE_CHECKING:
    from vmkeep.storage.backend import Backend
    from vmkeep.storage.crypto import ObjectCipher

MAGIC = b"VMKPACK1"
#: Magic of a version-2 pack (named by its contents table, see the module docstring).
MAGIC2 = b"VMKPACK2"
MAGICS = (MAGIC, MAGIC2)
END_MAGIC = b"VMKPEND1"
#: End magic of a pack in an encrypted repository (its trailer is ``nonce || AEAD``).
END_MAGIC_ENC = b"VMKPENC1"
TRAILER_AD = b"vmkeep pack trailer v1"
ENTRY = struct.Struct("<32sBbQII")  # after codec: level (signed), was "kind"
FOOTER = struct.Struct("<I8s")
#: The entry byte meaning "level not recorded" (raw and recipe blobs; packs from before levels).
NO_LEVEL = 0
#: Codecs a blob entry may name (see :mod:`vmkeep.storage.codec`).
CODECS = frozenset({CODEC_RAW, CODEC_ZSTD, CODEC_RECIPE})


@dataclass(frozen=True, slots=True)
class PackEntry:
    blob_id: bytes
    codec: int
    offset: int
    stored_length: int
    raw_length: int
    #: zstd level of a codec-1 blob, ``None`` when not recorded (see the module docstring)
    level: int | None = None


def pack_key(pack_id: bytes) -> str:
    hexid = pack_id.hex()
    return f"packs/{hexid[:2]}/{hexid}"


def pack_id_from_key(key: str) -> bytes:
    return bytes.fromhex(key.rsplit("/", 1)[-1])


class PackBuilder:
    """Accumulates blobs in memory until :meth:`finish`.  Not thread-safe (one owner).

    Payloads are kept as the caller's buffers (no copy); :meth:`finish_parts` returns them with
    the trailer as a list of buffers for a gathering write (``os.writev``), :meth:`finish` as one
    ``bytes``.  The caller must not modify a payload after adding it.
    """

    def __init__(self, version: int = 1) -> None:
        if version not in (1, 2):
            raise ValueError(f"unknown pack version {version}")
        self.magic = MAGIC2 if version == 2 else MAGIC
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
        stored = memoryview(payload).nbytes
        if codec != CODEC_ZSTD or level == NO_LEVEL:
            level = None
        elif level is not None and not -128 <= level <= 127:
            raise ValueError(f"zstd level {level} does not fit a pack entry")
        entry = PackEntry(blob_id, codec, self.size, stored, raw_length, level)
        self.parts.append(payload)
        self.size += stored
        self.entries.append(entry)
        return entry

    def finish_parts(
        self, cipher: ObjectCipher | None = None
    ) -> tuple[bytes, list[bytes | memoryview], list[PackEntry]]:
        """Return ``(pack_id, parts, entries)``: the pack is ``b"".join(parts)``; its id is the
        BLAKE3 of those bytes, hashed part by part (version 1), or of the magic, trailer and
        footer only (version 2).  The builder must not be
        reused.  With a ``cipher`` the trailer is encrypted (payloads were encrypted by the
        caller)."""
        trailer = b"".join(
            ENTRY.pack(
                e.blob_id,
                e.codec,
                NO_LEVEL if e.level is None else e.level,
                e.offset,
                e.stored_length,
                e.raw_length,
            )
            for e in self.entries
        )
        if cipher is not None:
            trailer = cipher.seal(trailer, TRAILER_AD)
        footer = FOOTER.pack(len(trailer), END_MAGIC if cipher is None else END_MAGIC_ENC)
        parts, self.parts = [*self.parts, trailer, footer], []
        hasher = blake3()
        if self.magic == MAGIC2:  # named by its contents table
            hasher.update(MAGIC2 + trailer + footer)
            return hasher.digest(), parts, self.entries
        for part in parts:
            hasher.update(part)
        return hasher.digest(), parts, self.entries

    def finish(self, cipher: ObjectCipher | None = None) -> tuple[bytes, bytes, list[PackEntry]]:
        """Return ``(pack_id, pack_bytes, entries)``; see :meth:`finish_parts`."""
        pack_id, parts, entries = self.finish_parts(cipher)
        return pack_id, b"".join(parts), entries


def parse_pack(data: bytes, where: str, cipher: ObjectCipher | None = None) -> list[PackEntry]:
    """Parse and bounds-check a whole pack's trailer (decrypting it with ``cipher`` in an
    encrypted repository).  Raises ``FormatError`` / ``DataCorrupt`` when malformed."""
    if not data.startswith(MAGICS):
        raise FormatError(where, "not a vmkeep pack")
    return parse_trailer(data, len(data), where, cipher)


def pack_digest(data: bytes) -> bytes:
    """The name (as bytes) a whole pack must have: see the module docstring.  A pack whose
    footer is unreadable gets the BLAKE3 of all its bytes (which then will not match)."""
    if data.startswith(MAGIC2) and len(data) >= len(MAGIC2) + FOOTER.size:
        trailer_len, _end = FOOTER.unpack_from(data, len(data) - FOOTER.size)
        start = len(data) - FOOTER.size - trailer_len
        if start >= len(MAGIC2):
            return blake3(MAGIC2 + data[start:]).digest()
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
    if end != (END_MAGIC if cipher is None else END_MAGIC_ENC):
        raise FormatError(where, "bad pack footer (or an encrypted pack without the key)")
    trailer_start = pack_size - FOOTER.size - trailer_len
    if trailer_start < len(MAGIC):
        raise FormatError(where, "pack trailer larger than the pack")
    if trailer_len + FOOTER.size > len(tail):
        raise NeedMore(where, trailer_len + FOOTER.size)
    base = len(tail) - FOOTER.size - trailer_len
    trailer = tail[base : base + trailer_len]
    if cipher is not None:
        trailer = cipher.open(trailer, TRAILER_AD, where)
    if len(trailer) % ENTRY.size:
        raise FormatError(where, "bad pack trailer length")
    entries = []
    for pos in range(0, len(trailer), ENTRY.size):
        blob_id, codec, level, offset, stored, raw = ENTRY.unpack_from(trailer, pos)
        if offset < len(MAGIC) or offset + stored > trailer_start or raw > MAX_BLOB_SIZE:
            raise FormatError(where, f"blob entry out of bounds at trailer offset {pos}")
        if codec not in CODECS:
            raise FormatError(where, f"unknown codec {codec} at trailer offset {pos}")
        recorded = level if codec == CODEC_ZSTD and level != NO_LEVEL else None
        entries.append(PackEntry(blob_id, codec, offset, stored, raw, recorded))
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
