"""LZX and XPRESS chunks decoded through wimlib (:mod:`vmkeep.disks.fs.wimlib`): chunks wimlib's
own compressors made decode to their bytes, from several threads at once; bad input — random,
cut short, a size that is not the chunk's — is a :class:`WimlibError`, never a crash or other
bytes.  Whole files WOF compressed on an NTFS volume are read in
``test_disks_ntfs_elsewhere.py``."""

from __future__ import annotations

import contextlib
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.missing import missing
from vmkeep.disks.fs import wimlib

#: codec → WOF's largest chunk for it (XPRESS16K, LZX)
CODECS = {"xpress": (wimlib.XPRESS, 16384), "lzx": (wimlib.LZX, 32768)}
TEXT = b"".join(b"MZ header %05d, a Windows system file\r\n" % i for i in range(1000))


def _compress(codec: int, data: bytes) -> bytes:
    """``data`` compressed by wimlib's compressor for ``codec`` (what Windows stores)."""
    lib = wimlib._library()
    if lib is None:
        missing("wimlib (libwim15) is not installed")
    lib.wimlib_compress.restype = ctypes.c_size_t
    lib.wimlib_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
                                    ctypes.c_size_t, ctypes.c_void_p]
    compressor = ctypes.c_void_p()
    assert lib.wimlib_create_compressor(codec, wimlib.MAX_CHUNK[codec], 50,
                                        ctypes.byref(compressor)) == 0
    out = ctypes.create_string_buffer(len(data))
    try:
        size = lib.wimlib_compress(data, len(data), out, len(data), compressor)
    finally:
        lib.wimlib_free_compressor(compressor)
    assert 0 < size < len(data), "did not compress"
    return out.raw[:size]


@pytest.fixture(scope="module", params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> tuple[int, int, dict[bytes, bytes]]:
    """(codec, chunk size, content → its chunk): text, x86 calls (LZX translates E8), a last
    chunk cut short."""
    number, chunk = CODECS[request.param]
    calls = (b"\x55\x48\x89\xe5\xe8\x10\x20\x00\x00" * 4000)[:chunk]
    return number, chunk, {data: _compress(number, data)
                           for data in (TEXT[:chunk], calls, TEXT[:5000])}


def test_chunks_wimlib_compressed_decode_to_their_bytes(codec) -> None:
    number, _chunk, chunks = codec
    for data, packed in chunks.items():
        assert wimlib.decompress(number, packed, len(data)) == data


def test_threads_each_decode_with_their_own_decompressor(codec) -> None:
    number, _chunk, chunks = codec
    items = list(chunks.items()) * 40
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda item: wimlib.decompress(number, item[1], len(item[0])),
                            items))
    assert got == [data for data, _ in items]


def test_a_chunk_cut_short_or_asked_for_another_size_is_an_error(codec) -> None:
    number, chunk, chunks = codec
    packed = chunks[TEXT[:chunk]]
    for cut in (1, len(packed) // 2):
        with pytest.raises(wimlib.WimlibError):
            wimlib.decompress(number, packed[:cut], chunk)
    for cut in range(len(packed) - 4, len(packed)):  # XPRESS's last bytes may be padding only
        with contextlib.suppress(wimlib.WimlibError):
            assert wimlib.decompress(number, packed[:cut], chunk) == TEXT[:chunk]
    with pytest.raises(wimlib.WimlibError):
        wimlib.decompress(number, packed, chunk + 1)
    with pytest.raises(wimlib.WimlibError):
        wimlib.decompress(number, packed, 0)


@settings(max_examples=200)
@given(st.sampled_from(sorted(CODECS)), st.binary(min_size=0, max_size=4096),
       st.integers(min_value=1, max_value=32768))
def test_random_input_is_an_error_or_exactly_the_size_asked(name: str, data: bytes,
                                                            size: int) -> None:
    if not wimlib.available():
        missing("wimlib (libwim15) is not installed")
    number, chunk = CODECS[name]
    try:
        out = wimlib.decompress(number, data, min(size, chunk))
    except wimlib.WimlibError:
        return
    assert len(out) == min(size, chunk)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_random_chunks_of_the_full_size_are_errors(name: str) -> None:
    if not wimlib.available():
        missing("wimlib (libwim15) is not installed")
    number, chunk = CODECS[name]
    errors = 0
    for _ in range(200):
        try:
            assert len(wimlib.decompress(number, os.urandom(chunk // 2), chunk)) == chunk
        except wimlib.WimlibError:
            errors += 1
    assert errors > 150
