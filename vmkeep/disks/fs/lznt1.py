"""LZNT1 — what NTFS compresses a file with when its folder is marked compressed (Explorer's
"Compress contents to save disk space", ``compact /c``) — decoded by libfwnt (libyal's C
library, through its ``pyfwnt`` binding) instead of dissect.util's pure-Python decoder.

dissect.ntfs reads a compressed stream one compression unit at a time
(:class:`dissect.ntfs.stream.CompressedRunlistStream`) and decodes each unit by calling
``lznt1.decompress`` on that module's own name; :func:`install` points that name at this module,
so every NTFS file vmkeep reads (restores, mounts, listings, scans) decodes here.  Measured on
this machine's executables in a compressed folder (``bench/bench_lznt1.py``): 6.8 MiB/s with
the Python decoder, ~165 MiB/s with libfwnt (docs/performance.md).

Contract of :func:`decompress` (the one dissect.ntfs calls): the unit's compressed bytes (a
file-like object or bytes; dissect appends 64 zero bytes, an end-of-data chunk header) in, the
unit's bytes out — at most :data:`MAX_UNIT`, the largest unit NTFS makes (16 clusters of at most
4 KiB).  A unit that does not decode, or would decode to more, raises ``OSError``: dissect turns
it into an I/O error and vmkeep's readers into a typed file-system error naming the file — never
a short or zero-filled read, as the Python decoder gives for garbage.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

import pyfwnt

#: the largest compression unit NTFS writes: 16 clusters of at most 4 KiB (Windows compresses
#: nothing on volumes with larger clusters)
MAX_UNIT = 16 * 4096


def decompress(src: bytes | BinaryIO) -> bytes:
    """One compression unit, decoded (see the module docstring)."""
    data = src if isinstance(src, bytes) else src.read()
    return bytes(pyfwnt.lznt1_decompress(data, MAX_UNIT))


def install() -> None:
    """Make dissect.ntfs decode LZNT1 with :func:`decompress` (idempotent)."""
    import dissect.ntfs.stream

    dissect.ntfs.stream.lznt1 = sys.modules[__name__]
