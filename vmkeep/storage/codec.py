"""Chunk identity and blob encoding: keyed BLAKE3 ids, xxh3 change detection, bounded zstd.

* A chunk's **id** is ``blake3(data, key=hash_key)`` (32 bytes), the key made at ``init``.  Guest
  data is attacker-controlled; an unkeyed or non-cryptographic hash would let a crafted chunk
  collide with another VM's chunk and silently corrupt it.
* **xxh3-128** (16 bytes, ~30 GB/s) is only for change detection against the previous restore
  point: a matching xxh3 at the same offset skips hashing and compressing, never identifies data.
* A **recipe** (codec 2, repository version 2) stands for an image frame cut into
  content-defined pieces: its payload lists the pieces (:func:`encode_recipe`), each stored as
  its own blob.  The recipe's id is the keyed BLAKE3 of the whole frame (versions 2-4: checked
  after the pieces are joined) or, in version 5, the keyed BLAKE3 of the recipe payload under a
  key derived from the chunk-id key (:meth:`ChunkHasher.recipe_id`: checked before the pieces
  are fetched, each piece then against its own id) — either way a forged recipe cannot pass.  A
  piece is never itself a recipe.
* A **unit** (codec 3, repository version 4) is one zstd frame holding the new pieces of one
  frame back to back (:meth:`BlobCodec.encode_unit`); each piece stays a blob with its own id,
  located by the unit's payload plus its offset and length inside the decoded unit
  (:meth:`BlobCodec.decode_unit` decodes a unit once for all its pieces).  Compressed together,
  the pieces share their context: 3 % smaller than each piece on its own at the same level
  (docs/performance.md, "Where the last 18 MiB over borg go").
* A blob is stored raw (codec 0) or as one zstd frame (codec 1); zstd is kept only when it saves
  at least 3 % (:data:`MIN_SAVING`); large chunks whose first 32 KiB do not compress are stored
  raw without trying the rest.  Decoding is bounded: the expected raw length comes from the index,
  is capped at :data:`MAX_BLOB_SIZE`, and a frame whose header claims another size is rejected
  before anything is allocated (python-zstandard trusts the frame's content size otherwise).
"""

from __future__ import annotations

import os
import struct
import sys
import threading

import xxhash
import zstandard
from blake3 import blake3

from vmkeep.storage.errors import DataCorrupt

CODEC_RAW = 0
CODEC_ZSTD = 1
#: The payload lists content-defined pieces of a frame (:func:`encode_recipe`).
CODEC_RECIPE = 2
#: A piece inside a compression unit (repository version 4): the payload a location names is the
#: unit's (one zstd frame of several pieces); the piece is a slice of the decoded unit.
CODEC_UNIT = 3
#: Hard upper bound of one chunk, whatever a (possibly forged) index or manifest claims.
MAX_BLOB_SIZE = 64 * 1024 * 1024
#: zstd output is kept only when it is at most this fraction of the input.
MIN_SAVING = 0.97
#: Chunks at least this large are first probed: when zstd cannot shrink the first
#: :data:`PROBE_SIZE` bytes, the chunk is stored raw without compressing the rest (incompressible
#: data — media, encrypted or already compressed files — then costs almost nothing).
PROBE_THRESHOLD = 256 * 1024
PROBE_SIZE = 32 * 1024
ID_SIZE = 32
ZERO_ID = bytes(ID_SIZE)
#: BLAKE3 key-derivation context of the recipe-id key (repository version 5)
RECIPE_ID_CONTEXT = "vmkeep 2026-12-04 recipe id"


_allocator_tuned = False


def keep_freed_buffers() -> None:
    """Let glibc's ``malloc`` reuse freed chunk-sized buffers instead of returning them to the
    kernel (process-wide; idempotent; a no-op off glibc).

    By default glibc serves large allocations with ``mmap`` (the threshold adapts only up to a
    point and is per allocation pattern) and trims freed heap tops, so each fresh 1 MiB buffer
    of the data path — every ``pread`` result, zstd output, decoded chunk — is page-faulted and
    zeroed by the kernel again: ~770,000 minor faults and ~1.5 CPU-seconds of a 4 GiB image
    backup on the 2-core benchmark machine.  Freed buffers stay reusable; peak memory is still
    bounded by what the pipeline holds at once (a few dozen chunks and two packs).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    if not sys.platform.startswith("linux"):
        return
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    mallopt(m_mmap_threshold, MAX_BLOB_SIZE // 2)  # 32 MiB, glibc's dynamic maximum
    mallopt(m_trim_threshold, 4 * MAX_BLOB_SIZE)


class ChunkHasher:
    """Keyed chunk ids and xxh3 fingerprints.  Thread-safe (no shared state)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the chunk-id key must be 32 bytes")
        self.key = key
        self._recipe_key = blake3(key, derive_key_context=RECIPE_ID_CONTEXT).digest()

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return blake3(data, key=self.key).digest()

    def recipe_id(self, recipe: bytes | memoryview) -> bytes:
        """A frame's id in a version-5 repository: the keyed BLAKE3 of its recipe payload, under
        a key derived from the chunk-id key (so no recipe id can equal a chunk id)."""
        return blake3(recipe, key=self._recipe_key).digest()

    @staticmethod
    def fingerprint(data: bytes | memoryview) -> bytes:
        return xxhash.xxh3_128_digest(data)


class BlobCodec:
    """zstd compression with per-thread contexts (python-zstandard contexts are not thread-safe)."""

    def __init__(self, level: int = 1) -> None:
        self.level = level
        self._local = threading.local()

    def _compressor(self, level: int | None = None) -> zstandard.ZstdCompressor:
        level = self.level if level is None else level
        comps: dict[int, zstandard.ZstdCompressor] | None = getattr(self._local, "c", None)
        if comps is None:
            comps = self._local.c = {}
        comp = comps.get(level)
        if comp is None:
            comp = comps[level] = zstandard.ZstdCompressor(level=level)
        return comp

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        dec = getattr(self._local, "d", None)
        if dec is None:
            dec = self._local.d = zstandard.ZstdDecompressor()
        return dec

    def encode(self, raw: bytes | memoryview, level: int | None = None) -> tuple[int, bytes]:
        """Return ``(codec, payload)``: zstd (at ``level``, default the repository's) when it
        pays, else the raw bytes.  The level is not needed to decode."""
        compressor = self._compressor(level)
        if len(raw) >= PROBE_THRESHOLD:
            probe = compressor.compress(memoryview(raw)[:PROBE_SIZE])
            if len(probe) > PROBE_SIZE * MIN_SAVING:
                return CODEC_RAW, bytes(raw)
        packed = compressor.compress(raw)
        if len(packed) <= len(raw) * MIN_SAVING:
            return CODEC_ZSTD, packed
        return CODEC_RAW, bytes(raw)

    def encode_unit(
        self, pieces: list[bytes | memoryview], level: int | None = None
    ) -> tuple[bytes | None, bool]:
        """``(payload, incompressible)``: one zstd frame of ``pieces`` joined (a unit), or
        ``None`` when it does not save at least 3 % (then each piece is encoded on its own,
        :meth:`encode`).  No probe of the first bytes, unlike :meth:`encode`: a frame's first
        piece often differs from the rest (an incompressible file's tail before text), and zstd
        passes incompressible blocks through cheaply inside the frame.  A single buffer (the
        caller's pieces adjacent in one frame) is compressed as it is, without a joined copy.

        ``incompressible``: zstd saved nothing at all (the frame it made is no smaller than the
        input: every block of the unit was stored raw).  The caller then stores the pieces raw
        without compressing each again: a piece that shrinks alone makes its 128 KiB block
        shrink too, and zstd keeps a block compressed once it saves 1/64 of it (``ZSTD_minGain``),
        so what this can miss is under ~2 KiB per block — nothing on random or already-compressed
        data, where the second try cost a full zstd pass per piece."""
        joined = memoryview(pieces[0]) if len(pieces) == 1 else memoryview(b"".join(pieces))
        payload = self._compressor(level).compress(joined)
        if len(payload) <= joined.nbytes * MIN_SAVING:
            return payload, False
        return None, len(payload) >= joined.nbytes

    def decode_unit(self, payload: bytes | memoryview, unit_length: int, where: str) -> bytes:
        """Decode a unit's payload (one zstd frame) to exactly ``unit_length`` bytes, else
        ``DataCorrupt``.  The caller slices and authenticates each piece."""
        if not 0 < unit_length <= MAX_BLOB_SIZE:
            raise DataCorrupt(where, f"implausible unit length {unit_length}")
        raw = self.decode(CODEC_ZSTD, payload, unit_length, where)
        return raw if isinstance(raw, bytes) else bytes(raw)

    def decode(
        self, codec: int, payload: bytes | memoryview, raw_length: int, where: str
    ) -> bytes | memoryview:
        """Decode a stored blob to exactly ``raw_length`` bytes or raise ``DataCorrupt``; a raw
        blob is returned as given (a view stays a view)."""
        if not 0 < raw_length <= MAX_BLOB_SIZE:
            raise DataCorrupt(where, f"implausible chunk length {raw_length}")
        if codec == CODEC_RAW:
            if len(payload) != raw_length:
                raise DataCorrupt(where, "stored length does not match")
            return payload
        if codec != CODEC_ZSTD:
            raise DataCorrupt(where, f"unknown codec {codec}")
        try:
            claimed = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as exc:
            raise DataCorrupt(where, f"bad zstd frame: {exc}") from None
        if claimed not in (-1, raw_length):
            raise DataCorrupt(where, f"zstd frame claims {claimed} bytes, expected {raw_length}")
        try:
            raw = self._decompressor().decompress(payload, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise DataCorrupt(where, f"zstd: {exc}") from None
        if len(raw) != raw_length:
            raise DataCorrupt(where, "decompressed length does not match")
        return raw


#: Recipe payload: ``b"VMKR"``, u32 LE piece count, then per piece its id (32 bytes; all zero
#: for an all-zero piece, which is not stored) and its length (u32 LE), in frame order.
RECIPE_MAGIC = b"VMKR"
_RECIPE_HEAD = struct.Struct("<4sI")
_RECIPE_PIECE = struct.Struct("<32sI")


def encode_recipe(pieces: list[tuple[bytes, int]]) -> bytes:
    """The recipe payload for ``(piece id, length)`` pairs in frame order."""
    return _RECIPE_HEAD.pack(RECIPE_MAGIC, len(pieces)) + b"".join(
        _RECIPE_PIECE.pack(blob_id, length) for blob_id, length in pieces
    )


def decode_recipe(
    payload: bytes | memoryview, raw_length: int, where: str
) -> list[tuple[bytes, int]]:
    """Parse and bound-check a recipe whose frame is ``raw_length`` bytes: the pieces must be
    non-empty and add up to exactly ``raw_length``.  ``DataCorrupt`` otherwise."""
    if not 0 < raw_length <= MAX_BLOB_SIZE:
        raise DataCorrupt(where, f"implausible chunk length {raw_length}")
    view = memoryview(payload)
    if len(view) < _RECIPE_HEAD.size:
        raise DataCorrupt(where, "recipe too short")
    magic, count = _RECIPE_HEAD.unpack_from(view, 0)
    if magic != RECIPE_MAGIC or len(view) != _RECIPE_HEAD.size + count * _RECIPE_PIECE.size:
        raise DataCorrupt(where, "malformed recipe")
    pieces = [
        _RECIPE_PIECE.unpack_from(view, _RECIPE_HEAD.size + i * _RECIPE_PIECE.size)
        for i in range(count)
    ]
    if any(length == 0 for _, length in pieces) or sum(n for _, n in pieces) != raw_length:
        raise DataCorrupt(where, f"recipe pieces do not add up to {raw_length} bytes")
    return pieces
