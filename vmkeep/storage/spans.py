"""Coalesced reads: consecutive chunks stored back to back in one pack are fetched with one get.

A restore reads a disk's chunks in offset order, and a backup stored the chunks it wrote in that
order, so long runs of them sit back to back in the same pack.  Fetching such a run with one
ranged ``get`` instead of one per chunk gives a disk large sequential reads (a repository that
is not in the page cache — the usual case for a restore — is read at the device's streaming
rate, not one synchronous 1 MiB read per chunk) and a remote target one request per span.

Contract: a :class:`Span` covers at most :data:`MAX_SPAN_STORED` stored and
:data:`MAX_SPAN_RAW` decoded bytes (memory per span in flight), blobs of one pack whose stored
bytes are contiguous or separated by at most :data:`MAX_GAP` bytes (read and discarded); a blob
repeated inside the span's range (content-defined pieces repeat often) is taken from the same
read.  Pieces inside one compression unit (codec 3, repository version 4) share the unit's
payload: a span fetches it once, decodes it once (counted once in the span's decoded bytes)
and slices every piece it wants out of it — a unit is at most one frame's new pieces, so a
random read of one piece decodes at most one frame.
:func:`fetch_span` authenticates every blob like ``Repository.read_blob`` and raises the same
typed errors: ``BlobMissing`` (unknown blob or missing pack), ``DataCorrupt`` (short pack,
bad frame, failed hash).  Nothing here writes; nothing is retried here (a retrying backend
retries the ``get``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vmkeep.storage.codec import CODEC_UNIT, decode_recipe
from vmkeep.storage.errors import BlobMissing, DataCorrupt, ObjectNotFound
from vmkeep.storage.index import BlobLocation
from vmkeep.storage.pack import pack_key
from vmkeep.storage.repository import Repository

#: Largest stored range fetched with one ``get``.
MAX_SPAN_STORED = 8 * 1024 * 1024
#: Largest decoded size of one span (what a span in flight may hold once decoded).
MAX_SPAN_RAW = 16 * 1024 * 1024
#: Largest hole between two blobs of a span (bytes read for nothing, to save a request).
MAX_GAP = 64 * 1024


@dataclass
class Span:
    """Blobs of one pack fetched together: ``(tag, blob id, location)`` in fetch order; the
    caller's ``tag`` (e.g. the chunk number) comes back with each decoded blob."""

    pack_id: bytes
    start: int
    end: int
    raw: int = 0
    items: list[tuple[int, bytes, BlobLocation]] = field(default_factory=list)
    #: pack offsets of the units whose decoded length ``raw`` counts already
    units: set[int] = field(default_factory=set)

    def _raw(self, loc: BlobLocation) -> int:
        """Decoded bytes ``loc`` adds to the span: a unit's length once, else the blob's."""
        if loc.codec == CODEC_UNIT:
            return 0 if loc.offset in self.units else loc.unit_length
        return loc.raw_length

    def admits(self, loc: BlobLocation) -> bool:
        end = loc.offset + loc.stored_length
        if loc.pack_id != self.pack_id or self.raw + self._raw(loc) > MAX_SPAN_RAW:
            return False
        if self.start <= loc.offset and end <= self.end:
            return True  # already inside the range (a repeated blob): no more bytes to get
        return self.end <= loc.offset <= self.end + MAX_GAP and end - self.start <= MAX_SPAN_STORED

    def add(self, tag: int, blob_id: bytes, loc: BlobLocation) -> None:
        self.items.append((tag, blob_id, loc))
        self.end = max(self.end, loc.offset + loc.stored_length)
        self.raw += self._raw(loc)
        if loc.codec == CODEC_UNIT:
            self.units.add(loc.offset)


def plan_spans(repo: Repository, blobs: Iterable[tuple[int, bytes]]) -> Iterator[Span]:
    """Group ``(tag, blob id)`` pairs, in the given order, into spans.  Order is kept: a blob
    that does not extend the current span starts the next one.  Raises ``BlobMissing`` for a
    blob the index does not know (before anything of it is fetched)."""
    span: Span | None = None
    for tag, blob_id in blobs:
        loc = repo.locate(blob_id)
        if loc is None:
            raise BlobMissing(blob_id.hex()[:16], "unknown")
        if span is not None and span.admits(loc):
            span.add(tag, blob_id, loc)
            continue
        if span is not None:
            yield span
        span = Span(loc.pack_id, loc.offset, loc.offset)
        span.add(tag, blob_id, loc)
    if span is not None:
        yield span


def _get(repo: Repository, span: Span) -> tuple[str, memoryview]:
    key = pack_key(span.pack_id)
    length = span.end - span.start
    try:
        data = repo.backend.get(key, span.start, length)
    except ObjectNotFound:
        raise BlobMissing(span.items[0][1].hex()[:16], span.pack_id.hex()[:16]) from None
    if len(data) != length:
        raise DataCorrupt(key, f"pack truncated at offset {span.start + len(data)}")
    return key, memoryview(data)


def fetch_span(repo: Repository, span: Span) -> list[tuple[int, bytes | memoryview]]:
    """Fetch a span with one ``get``; return ``(tag, decoded chunk)`` for each of its blobs,
    each authenticated (keyed BLAKE3).  Raw-stored chunks come back as views of the fetched
    bytes (no copy).  A recipe's pieces are fetched and joined (one more ``get`` per pack
    they lie in); :func:`read_recipes` reads recipes without joining them."""
    key, view = _get(repo, span)
    out: list[tuple[int, bytes | memoryview]] = []
    units: dict[int, bytes] = {}  # pack offset -> decoded unit, decoded once per span
    for tag, blob_id, loc in span.items:
        rel = loc.offset - span.start
        payload = view[rel : rel + loc.stored_length]
        if loc.codec == CODEC_UNIT:
            unit = units.get(loc.offset)
            if unit is None:
                wanted = [b for _, b, u in span.items if u.offset == loc.offset]
                unit = units[loc.offset] = repo.decode_unit(payload, loc.unit_length, key, wanted)
            out.append((tag, repo.unit_piece(blob_id, unit, loc, key)))
            continue
        out.append((tag, repo.decode_payload(blob_id, loc.codec, payload, loc.raw_length, key)))
    return out


def read_recipes(repo: Repository, ids: Iterable[bytes]) -> dict[bytes, list[tuple[bytes, int]]]:
    """The pieces ``(piece id, length)`` of recipe blobs, read with as few ranged gets as their
    packs allow (the recipes of one backup are stored back to back).  In an encrypted
    repository each recipe is authenticated (AEAD bound to its id); in a version-5 repository
    each recipe is checked against its id (the keyed hash of the recipe); otherwise only its
    structure is checked here — the caller must check the joined frame against its id (a
    restore hashes the frame it wrote).  ``BlobMissing`` / ``DataCorrupt``."""
    out: dict[bytes, list[tuple[bytes, int]]] = {}
    for span in plan_spans(repo, enumerate(dict.fromkeys(ids))):
        key, view = _get(repo, span)
        for _tag, blob_id, loc in span.items:
            rel = loc.offset - span.start
            stored = view[rel : rel + loc.stored_length]
            payload = repo.open_recipe(blob_id, stored, key)
            out[blob_id] = decode_recipe(payload, loc.raw_length, key)
    return out
