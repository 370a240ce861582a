"""Blob encoding, bounded decompression, chunk ids and the pack format."""

from __future__ import annotations

import os
import struct

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkeep.storage.codec import CODEC_RAW, CODEC_ZSTD, MAX_BLOB_SIZE, BlobCodec, ChunkHasher
from vmkeep.storage.errors import DataCorrupt, FormatError
from vmkeep.storage.pack import PackBuilder, parse_pack


@settings(max_examples=50)
@given(st.binary(min_size=1, max_size=20000))
def test_encode_decode_roundtrip(data: bytes) -> None:
    codec = BlobCodec()
    kind, payload = codec.encode(data)
    assert kind in (CODEC_RAW, CODEC_ZSTD)
    assert codec.decode(kind, payload, len(data), "t") == data


def test_incompressible_data_is_stored_raw() -> None:
    data = os.urandom(100_000)
    assert BlobCodec().encode(data)[0] == CODEC_RAW
    assert BlobCodec().encode(b"a" * 100_000)[0] == CODEC_ZSTD


def test_forged_frame_claiming_huge_size_is_rejected_before_allocating() -> None:
    """A zstd header claiming 1 TiB must not make decompression allocate it."""
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"x" * 1000)
    # rewrite the frame to claim an enormous content size (single-segment, 8-byte FCS)
    descriptor = frame[4]
    single = (descriptor >> 5) & 1
    fcs_size = [1 if single else 0, 2, 4, 8][descriptor >> 6]
    header_len = 5 + (0 if single else 1) + fcs_size
    forged = frame[:4] + bytes([0xE0]) + struct.pack("<Q", 1 << 40) + frame[header_len:]
    assert zstandard.frame_content_size(forged) == 1 << 40
    with pytest.raises(DataCorrupt):
        BlobCodec().decode(CODEC_ZSTD, forged, 1000, "forged")
    with pytest.raises(DataCorrupt):
        BlobCodec().decode(CODEC_ZSTD, frame, MAX_BLOB_SIZE + 1, "too big")
    with pytest.raises(DataCorrupt):
        BlobCodec().decode(CODEC_ZSTD, b"garbage", 10, "garbage")


def test_frame_without_content_size_is_bounded() -> None:
    stream = zstandard.ZstdCompressor(write_content_size=False).compress(b"y" * 5000)
    with pytest.raises(DataCorrupt):
        BlobCodec().decode(CODEC_ZSTD, stream, 100, "lying length")
    assert BlobCodec().decode(CODEC_ZSTD, stream, 5000, "ok") == b"y" * 5000


def test_chunk_ids_are_keyed() -> None:
    a, b = ChunkHasher(b"k" * 32), ChunkHasher(b"j" * 32)
    assert a.chunk_id(b"data") != b.chunk_id(b"data")
    assert len(a.chunk_id(b"data")) == 32
    with pytest.raises(ValueError):
        ChunkHasher(b"short")


def test_pack_roundtrip_and_malformed() -> None:
    builder = PackBuilder()
    blobs = [(os.urandom(32), os.urandom(n)) for n in (10, 1000, 5)]
    for blob_id, payload in blobs:
        builder.add(blob_id, CODEC_RAW, payload, len(payload))
    _pack_id, data, entries = builder.finish()
    parsed = parse_pack(data, "p")
    assert parsed == entries
    for entry, (blob_id, payload) in zip(parsed, blobs, strict=True):
        assert entry.blob_id == blob_id
        assert data[entry.offset : entry.offset + entry.stored_length] == payload
    for bad in (b"", b"nonsense" * 10, data[:-1], data[:20] + data[-12:]):
        with pytest.raises(FormatError):
            parse_pack(bad, "bad")
