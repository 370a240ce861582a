"""Benchmark prune on a synthetic repository: N restore points over ~M chunks.

    uv run python bench/bench_prune.py --points 100 --chunks 1000000 [--dir /tmp/bench-prune]

Builds packs of tiny blobs (16-byte payloads: prune's cost is in ids, not bytes), one index per
"backup", and image manifests that each reference a sliding window of the chunks; forgets the
oldest 10 % of points; then times ``prune --grace 0`` and reports wall and CPU time, peak RSS
(ru_maxrss) and the load average (/proc/loadavg) before and after — run ``--phase build`` then
``--phase prune`` for a peak RSS that is prune's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from datetime import UTC, datetime, timedelta

from vmkeep.storage.forget import forget_ids
from vmkeep.storage.index import encode_index
from vmkeep.storage.manifest import ChunkTable, DiskInfo, RestorePoint
from vmkeep.storage.pack import PackBuilder, pack_key
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository


def build(path: str, points: int, chunks: int) -> Repository:
    shutil.rmtree(path, ignore_errors=True)
    repo = Repository.init(path, image_chunk_size=64 * 1024)
    per_point_new = chunks // points
    window = min(chunks, per_point_new * 5)  # each point sees the last 5 batches of chunks
    all_ids: list[bytes] = []
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for p in range(points):
        written = []
        builder = PackBuilder()
        for i in range(per_point_new):
            blob_id = (p * per_point_new + i).to_bytes(8, "big") + os.urandom(24)
            builder.add(blob_id, 0, blob_id[:16], 16)
            all_ids.append(blob_id)
            if len(builder.entries) >= 50_000:
                pid, data, entries = builder.finish()
                repo.backend.put(pack_key(pid), data)
                written += [(pid, e) for e in entries]
                builder = PackBuilder()
        if builder.entries:
            pid, data, entries = builder.finish()
            repo.backend.put(pack_key(pid), data)
            written += [(pid, e) for e in entries]
        key, data = encode_index(written)
        repo.backend.put(key, data)
        ids = all_ids[-window:]
        table = ChunkTable()
        for n, blob_id in enumerate(ids):
            table.append(n * 16, 16, blob_id, bytes(16))
        disk = DiskInfo(0, "disk0", len(ids) * 16, 16)
        repo.save_point(RestorePoint("bench", "image", t0 + timedelta(hours=p), [disk], {0: table}))
    return repo


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/bench-prune")
    ap.add_argument(
        "--phase",
        choices=["build", "prune", "both"],
        default="both",
        help="run build and prune in separate processes for a clean peak RSS",
    )
    args = ap.parse_args()
    path = os.path.join(args.dir, "repo")
    build_s = 0.0
    if args.phase in ("build", "both"):
        t = time.monotonic()
        repo = build(path, args.points, args.chunks)
        build_s = time.monotonic() - t
        points = repo.list_points()
        forget_ids(repo, [p.id for p in points[: len(points) // 10]])
        if args.phase == "build":
            print(json.dumps({"build_s": round(build_s, 1)}))
            return
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    load_before = loadavg()
    t, cpu = time.monotonic(), time.process_time()
    report = prune(Repository.open(path), grace=timedelta(0))
    prune_s, prune_cpu_s = time.monotonic() - t, time.process_time() - cpu
    print(
        json.dumps(
            {
                "points": args.points,
                "chunks": args.chunks,
                "build_s": round(build_s, 1),
                "prune_s": round(prune_s, 1),
                "prune_cpu_s": round(prune_cpu_s, 1),
                "loadavg_before": load_before,
                "loadavg_after": loadavg(),
                "peak_rss_mib_before_prune": rss_before // 1024,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                "report": report.to_json(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
