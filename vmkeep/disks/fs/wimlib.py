"""WOF's compressed chunks decoded by wimlib: LZX (``compact /exe:lzx``) and XPRESS (CompactOS).

Formats: the chunks of WIM resources, which WOF's file provider reuses — XPRESS-Huffman
([MS-XCA] 2.1–2.2, also decoded in Python by :mod:`vmkeep.disks.fs.xpress`) and the LZX of WIM
files (wimlib's ``lzx_decompress.c`` and [MS-PATCH] describe it: a 32 KiB window, blocks of the
three LZX kinds, x86 ``E8`` call translation over a fixed 12,000,000-byte file size), each chunk
compressed on its own.  Decoding them is wimlib's job (Debian ``libwim15``, the library behind
``wimlib-imagex``/``wimtools`` and ntfs-3g's system-compression plugin): this module loads
``libwim.so.15`` through :mod:`ctypes` and calls its documented compression API
(``wimlib_create_decompressor``, ``wimlib_decompress``, ``wimlib_free_decompressor``).  The
library is optional: where it is not installed :func:`available` is false, XPRESS is decoded in
Python (≈ 50× slower: docs/performance.md, "Files Windows compressed with WOF") and LZX files
are listed as not readable, saying what to install (:mod:`vmkeep.disks.fs.ntfs`).

Contract: :func:`decompress` returns exactly ``size`` bytes or raises :class:`WimlibError`
(wimlib reads WIM files from anywhere and checks every length and match against its buffers;
the tests feed it random and cut chunks too); thread-safe — a decompressor per thread and
codec, freed with its thread; the GIL is released while wimlib decodes (a :class:`ctypes.CDLL`
call).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from functools import cache

#: wimlib's ``WIMLIB_COMPRESSION_TYPE_XPRESS`` and ``_LZX``
XPRESS, LZX = 1, 2
#: the largest chunk each codec decodes here (WOF's chunk sizes: XPRESS 4–16 KiB, LZX 32 KiB)
MAX_CHUNK = {XPRESS: 16384, LZX: 32768}
#: what to install where it is missing
PACKAGE = "libwim15"


class WimlibError(ValueError):
    """A chunk that does not decode to its size."""


@cache
def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("wim") or "libwim.so.15"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.wimlib_create_decompressor.argtypes = [ctypes.c_int, ctypes.c_size_t,
                                               ctypes.POINTER(ctypes.c_void_p)]
    lib.wimlib_create_decompressor.restype = ctypes.c_int
    lib.wimlib_decompress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
                                      ctypes.c_size_t, ctypes.c_void_p]
    lib.wimlib_decompress.restype = ctypes.c_int
    lib.wimlib_free_decompressor.argtypes = [ctypes.c_void_p]
    lib.wimlib_free_decompressor.restype = None
    return lib


def available() -> bool:
    """Whether wimlib is installed here (loaded once per process)."""
    return _library() is not None


class _Decompressor:
    """One wimlib decompressor, freed when its thread's storage is."""

    def __init__(self, lib: ctypes.CDLL, codec: int) -> None:
        self.lib, self.handle = lib, ctypes.c_void_p()
        if lib.wimlib_create_decompressor(codec, MAX_CHUNK[codec],
                                          ctypes.byref(self.handle)) != 0:
            raise MemoryError("wimlib could not make a decompressor")

    def __del__(self) -> None:
        if self.handle:
            self.lib.wimlib_free_decompressor(self.handle)
            self.handle = ctypes.c_void_p()


_local = threading.local()


def decompress(codec: int, data: bytes, size: int) -> bytes:
    """The ``size`` bytes (≤ :data:`MAX_CHUNK` of ``codec``: :data:`XPRESS` or :data:`LZX`)
    chunk ``data`` holds; :func:`available` must be true."""
    lib = _library()
    if lib is None:
        raise RuntimeError(f"wimlib ({PACKAGE}) is not installed")
    if not 0 < size <= MAX_CHUNK[codec]:
        raise WimlibError(f"a chunk of {size} bytes (these chunks hold 1–{MAX_CHUNK[codec]})")
    decompressors: dict[int, _Decompressor] | None = getattr(_local, "decompressors", None)
    if decompressors is None:
        decompressors = _local.decompressors = {}
    decompressor = decompressors.get(codec)
    if decompressor is None:
        decompressor = decompressors[codec] = _Decompressor(lib, codec)
    out = ctypes.create_string_buffer(size)
    if lib.wimlib_decompress(data, len(data), out, size, decompressor.handle) != 0:
        raise WimlibError("its data does not decode")
    return out.raw
