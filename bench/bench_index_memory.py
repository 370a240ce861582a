"""Memory and speed of the in-memory master index: MasterIndex (dict per blob) vs CompactIndex
(sorted flat buffers), each in a fresh child process.

Builds ``--blobs`` random index rows in index files of 100,000 rows (as a repository's index
files would load: ``add_table`` per file), then times single lookups (``in``, hits and misses)
and a batched ``has_many``, and reports the child's peak RSS above a baseline that imported the
same modules and built the same tables (the load's transient peak), and its RSS once the tables
are dropped (``rss_after_mb``: the index that stays; compare with the baseline's).

    uv run --frozen python bench/bench_index_memory.py [--blobs 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def child(kind: str, blobs: int) -> None:
    import pyarrow as pa

    from vmkeep.storage.compact_index import CompactIndex
    from vmkeep.storage.index import SCHEMA, MasterIndex

    rng_ids = os.urandom(32 * blobs)
    ids = [rng_ids[i * 32 : (i + 1) * 32] for i in range(blobs)]
    packs = [os.urandom(32) for _ in range(max(1, blobs // 500))]
    tables = []
    per = 100_000
    for start in range(0, blobs, per):
        n = min(per, blobs - start)
        tables.append(
            pa.table(
                [
                    pa.array(ids[start : start + n], pa.binary(32)),
                    pa.array([packs[(start + i) // 500] for i in range(n)], pa.binary(32)),
                    pa.array(range(n), pa.uint64()),
                    pa.array([65536] * n, pa.uint32()),
                    pa.array([65536] * n, pa.uint32()),
                    pa.array([1] * n, pa.uint8()),
                ],
                schema=SCHEMA,
            )
        )
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    traced = kind.endswith("-traced")
    kind = kind.removesuffix("-traced")
    if traced:  # bytes the index holds (Python objects; Arrow's transient buffers not traced)
        import tracemalloc

        tracemalloc.start()
        held0 = tracemalloc.get_traced_memory()[0]
    index = CompactIndex() if kind == "compact" else MasterIndex() if kind == "master" else None
    started = time.perf_counter()
    cpu0 = time.process_time()
    if index is not None:
        for t in tables:
            index.add_table(t)
        probe = ids[::97][:10_000] + [os.urandom(32) for _ in range(10_000)]
        _ = probe[0] in index  # a CompactIndex sorts here, once
    if traced:
        held, peak_traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            json.dumps(
                {
                    "kind": kind,
                    "blobs": blobs,
                    "traced": True,
                    "held_bytes_per_blob": round((held - held0) / blobs, 1),
                    "peak_bytes_per_blob": round((peak_traced - held0) / blobs, 1),
                }
            )
        )
        return
    load_s = time.perf_counter() - started
    load_cpu = time.process_time() - cpu0
    result = {
        "kind": kind,
        "blobs": blobs,
        "load_s": round(load_s, 2),
        "load_cpu_s": round(load_cpu, 2),
    }
    if index is not None:
        t0 = time.perf_counter()
        hits = sum(p in index for p in probe)
        result["lookup_us"] = round((time.perf_counter() - t0) / len(probe) * 1e6, 2)
        t0 = time.perf_counter()
        batch = index.has_many(probe)
        result["has_many_us"] = round((time.perf_counter() - t0) / len(probe) * 1e6, 3)
        assert hits == sum(batch) == 10_000
    del tables, ids  # what stays: the index
    import gc

    gc.collect()
    with open("/proc/self/statm") as f:
        rss_now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    result["rss_after_mb"] = round(rss_now / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_rss_mb"] = round(peak / 1024, 1)
    result["above_baseline_mb"] = round((peak - base) / 1024, 1)
    result["peak_bytes_per_blob"] = round((peak - base) * 1024 / blobs, 1)
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blobs", type=int, default=1_000_000)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.blobs)
        return 0
    print(f"load average {os.getloadavg()[0]:.2f}")
    for kind in ("none", "master", "compact", "master-traced", "compact-traced"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--blobs", str(args.blobs)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(out.stdout.strip(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
