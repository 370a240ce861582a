"""Decoding speed of files Windows compressed with WOF (CompactOS, ``compact /exe``), as a file
restore reads them (:func:`vmkeep.disks.fs.wof.open_wof`): XPRESS4K/8K/16K and LZX decoded by
wimlib through ctypes (:mod:`vmkeep.disks.fs.wimlib`, where it is installed) and XPRESS by
vmkeep's Python decoder (:mod:`vmkeep.disks.fs.xpress`, without wimlib), against wimlib's C
decoders called in a plain loop (the floor: no stream, no Python per chunk but the call).

The content is ``--mib`` MiB of this machine's executables and libraries (``/usr/bin``,
``/usr/lib``: the kind of files CompactOS compresses), compressed chunk by chunk with wimlib's
compressors into WOF's layout (chunk table, then chunks; a chunk stored as it is when it does
not shrink) — what ``wimcapture`` writes into a WIM resource and Windows into
``WofCompressedData``.

    uv run --frozen python bench/bench_wof.py [--mib 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import struct
import time
from pathlib import Path

from vmkeep.disks.fs import wimlib as wimlib_codecs
from vmkeep.disks.fs import wof

#: WOF algorithm → wimlib compression type (1 XPRESS, 2 LZX)
WIMLIB_TYPE = {0: 1, 2: 1, 3: 1, 1: 2}


def content(mib: int) -> bytes:
    """``mib`` MiB of executables and libraries, in a fixed order."""
    out, want = bytearray(), mib * 1024 * 1024
    for root in ("/usr/bin", "/usr/lib/x86_64-linux-gnu"):
        for path in sorted(Path(root).iterdir()):
            if path.is_file() and not path.is_symlink() and len(out) < want:
                out += path.read_bytes()[: want - len(out)]
    return bytes(out)


def wimlib() -> ctypes.CDLL:
    lib = wimlib_codecs._library()
    if lib is None:
        raise SystemExit("wimlib (libwim15) is not installed")
    lib.wimlib_compress.restype = ctypes.c_size_t
    lib.wimlib_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
                                    ctypes.c_size_t, ctypes.c_void_p]
    return lib


def wof_stream(data: bytes, algorithm: int) -> tuple[bytes, list[tuple[bytes, int]]]:
    """``data`` in WOF's layout for ``algorithm``, and its chunks as ``(stored, size)``."""
    lib, chunk = wimlib(), wof.ALGORITHMS[algorithm][1]
    compressor = ctypes.c_void_p()
    assert lib.wimlib_create_compressor(WIMLIB_TYPE[algorithm], chunk, 50,
                                        ctypes.byref(compressor)) == 0
    chunks = []
    out = ctypes.create_string_buffer(chunk)
    try:
        for at in range(0, len(data), chunk):
            piece = data[at:at + chunk]
            size = lib.wimlib_compress(piece, len(piece), out, len(piece) - 1, compressor)
            chunks.append((out.raw[:size] if size else piece, len(piece)))
    finally:
        lib.wimlib_free_compressor(compressor)
    offsets, pos = [], 0
    for stored, _ in chunks[:-1]:
        pos += len(stored)
        offsets.append(pos)
    table = b"".join(struct.pack("<I", o) for o in offsets)
    return table + b"".join(stored for stored, _ in chunks), chunks


def timed(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def wimlib_decode(chunks: list[tuple[bytes, int]], algorithm: int) -> None:
    """Every chunk decoded by wimlib's C decoder (the floor: no Python per byte)."""
    lib, chunk = wimlib(), wof.ALGORITHMS[algorithm][1]
    handle = ctypes.c_void_p()
    assert lib.wimlib_create_decompressor(WIMLIB_TYPE[algorithm], chunk,
                                          ctypes.byref(handle)) == 0
    out = ctypes.create_string_buffer(chunk)
    try:
        for stored, size in chunks:
            if len(stored) != size:
                assert lib.wimlib_decompress(stored, len(stored), out, size, handle) == 0
    finally:
        lib.wimlib_free_decompressor(handle)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data = content(args.mib)
    mib = len(data) / 2**20
    rows = []
    for algorithm in (0, 2, 3, 1):
        name = wof.ALGORITHMS[algorithm][0]
        stream, chunks = wof_stream(data, algorithm)
        row: dict[str, object] = {"algorithm": name,
                                  "ratio": round(len(stream) / len(data), 3)}
        for decoder in ("wimlib", "python"):
            if decoder == "python" and algorithm == wof.LZX:
                continue
            real = wimlib_codecs._library
            if decoder == "python":
                wimlib_codecs._library = lambda: None  # type: ignore[assignment]
            try:
                runs = []
                for _ in range(args.rounds):
                    f = wof.open_wof(io.BytesIO(stream), len(stream), len(data), algorithm,
                                     ("v", "f"))
                    got: list[bytes] = []
                    runs.append(timed(lambda f=f, got=got: got.append(f.read())))
                    assert got[0] == data, name
            finally:
                wimlib_codecs._library = real  # type: ignore[assignment]
            wall, cpu = sorted(runs)[len(runs) // 2]
            row[f"{decoder}_mib_s"] = round(mib / wall, 1)
            row[f"{decoder}_cpu_s"] = round(cpu, 3)
        floor = sorted(timed(lambda c=chunks, a=algorithm: wimlib_decode(c, a))
                       for _ in range(args.rounds))[args.rounds // 2]
        row["wimlib_loop_mib_s"] = round(mib / floor[0], 1)
        rows.append(row)
    print(json.dumps({"mib": round(mib, 1), "rounds": args.rounds,
                      "load": os.getloadavg()[0], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
