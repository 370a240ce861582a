"""Cost of one blob lookup from a cold process-local index, by index structure (issue #23).

Synthetic index rows (``--entries`` ids in ``--packs`` packs) are written as the local index
cache body is (Arrow IPC file) and, for comparison, as a sorted file of fixed-size records
(32-byte id, pack number, offset, lengths, codec — the mapped-index design).  Printed per
structure: seconds to load it and answer the first lookup (median of ``--repeat``).  The MAC
check of the real cache and repository listing are not included.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import struct
import tempfile
import time
from bisect import bisect_left
from pathlib import Path

import pyarrow as pa

from vmkeep.storage.compact_index import CompactIndex
from vmkeep.storage.index import MasterIndex, decode_index, encode_index
from vmkeep.storage.pack import PackEntry

RECORD = struct.Struct("<32sIQIIBII")  # id, pack number, offset, stored, raw, codec, unit off/len


class _MappedIds:
    """The sorted ids of a mapped record file as a sequence for :func:`bisect_left`."""

    def __init__(self, buf: mmap.mmap, n: int) -> None:
        self.buf, self.n = buf, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> bytes:
        start = i * RECORD.size
        return self.buf[start : start + 32]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=19154)
    parser.add_argument("--packs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    packs = [os.urandom(32) for _ in range(args.packs)]
    entries = [
        (packs[i % len(packs)], PackEntry(os.urandom(32), 1, i * 1000, 100 + i, 200 + i))
        for i in range(args.entries)
    ]
    key, data = encode_index(entries)
    table = decode_index(data, key)
    probe = entries[len(entries) // 2][1].blob_id
    with tempfile.TemporaryDirectory() as tmp:
        ipc = Path(tmp, "cache.arrow")
        with pa.OSFile(str(ipc), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        recs = Path(tmp, "cache.rec")
        numbers = {p: n for n, p in enumerate(packs)}
        rows = sorted(
            (e.blob_id, numbers[p], e.offset, e.stored_length, e.raw_length, e.codec, 0, 0)
            for p, e in entries
        )
        recs.write_bytes(b"".join(RECORD.pack(*r) for r in rows))

        def arrow_table() -> pa.Table:
            with pa.memory_map(str(ipc)) as src:
                return pa.ipc.open_file(src).read_all()

        def via_master() -> object:
            index = MasterIndex()
            index.add_table(arrow_table())
            return index.get(probe)

        def via_compact() -> object:
            index = CompactIndex()
            index.add_table(arrow_table())
            return index.get(probe)

        def via_mapped() -> object:
            with open(recs, "rb") as f:
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            ids = _MappedIds(buf, len(buf) // RECORD.size)
            i = bisect_left(ids, probe)  # type: ignore[arg-type]
            found = RECORD.unpack_from(buf, i * RECORD.size) if i < len(ids) else None
            return found if found is not None and found[0] == probe else None

        for name, fn in (("arrow+MasterIndex", via_master), ("arrow+CompactIndex", via_compact),
                         ("mapped records+bisect", via_mapped)):
            assert fn() is not None
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            print(f"{name:24s} {statistics.median(times) * 1000:8.3f} ms  ({args.entries} entries)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
