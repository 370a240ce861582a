"""LZX chunks decoded through wimlib (:mod:`vmkeep.disks.fs.lzx`): chunks wimlib's own compressor
made decode to their bytes, from several threads at once; bad input — random, cut short, a size
that is not the chunk's — is an :class:`LzxError`, never a crash or other bytes.  Whole files
WOF compressed with LZX on an NTFS volume are read in ``test_disks_ntfs_elsewhere.py``."""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.missing import missing
from vmkeep.disks.fs import lzx

CHUNK = lzx.MAX_CHUNK
TEXT = b"".join(b"MZ header %05d, a Windows system file\r\n" % i for i in range(1000))[:CHUNK]


def _compress(data: bytes) -> bytes:
    """``data`` compressed by wimlib's LZX compressor (what ``compact /exe:lzx`` stores)."""
    lib = lzx._library()
    if lib is None:
        missing("wimlib (libwim15) is not installed")
    lib.wimlib_compress.restype = ctypes.c_size_t
    lib.wimlib_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
                                    ctypes.c_size_t, ctypes.c_void_p]
    compressor = ctypes.c_void_p()
    assert lib.wimlib_create_compressor(2, CHUNK, 50, ctypes.byref(compressor)) == 0
    out = ctypes.create_string_buffer(len(data))
    try:
        size = lib.wimlib_compress(data, len(data), out, len(data), compressor)
    finally:
        lib.wimlib_free_compressor(compressor)
    assert 0 < size < len(data), "did not compress"
    return out.raw[:size]


@pytest.fixture(scope="module")
def chunks() -> dict[bytes, bytes]:
    """content → its LZX chunk: text, an x86 call (E8) translated, a last chunk cut short."""
    calls = (b"\x55\x48\x89\xe5\xe8\x10\x20\x00\x00" * 3000)[:CHUNK]
    return {data: _compress(data) for data in (TEXT, calls, TEXT[:5000])}


def test_chunks_wimlib_compressed_decode_to_their_bytes(chunks: dict[bytes, bytes]) -> None:
    for data, packed in chunks.items():
        assert lzx.decompress(packed, len(data)) == data


def test_threads_each_decode_with_their_own_decompressor(chunks: dict[bytes, bytes]) -> None:
    items = list(chunks.items()) * 40
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda item: lzx.decompress(item[1], len(item[0])), items))
    assert got == [data for data, _ in items]


def test_a_chunk_cut_short_or_asked_for_another_size_is_an_error(
        chunks: dict[bytes, bytes]) -> None:
    packed = chunks[TEXT]
    for cut in (1, len(packed) // 2, len(packed) - 1):
        with pytest.raises(lzx.LzxError):
            lzx.decompress(packed[:cut], CHUNK)
    with pytest.raises(lzx.LzxError):
        lzx.decompress(packed, CHUNK + 1)
    with pytest.raises(lzx.LzxError):
        lzx.decompress(packed, 0)


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=4096), st.integers(min_value=1, max_value=CHUNK))
def test_random_input_is_an_error_or_exactly_the_size_asked(data: bytes, size: int) -> None:
    if not lzx.available():
        missing("wimlib (libwim15) is not installed")
    try:
        out = lzx.decompress(data, size)
    except lzx.LzxError:
        return
    assert len(out) == size


def test_random_chunks_of_the_full_size_are_errors() -> None:
    if not lzx.available():
        missing("wimlib (libwim15) is not installed")
    errors = 0
    for _ in range(200):
        try:
            assert len(lzx.decompress(os.urandom(20_000), CHUNK)) == CHUNK
        except lzx.LzxError:
            errors += 1
    assert errors > 150
