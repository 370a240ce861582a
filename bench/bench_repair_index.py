"""``repair index`` at scale: wall time and peak memory for a repository of N index entries.

Builds (once per workdir) a repository of synthetic packs holding N tiny raw blobs (random ids,
one byte each, 20,000 per pack) and their index files, then runs :func:`repair_index` in a child
process (one run per round) after deleting the index files (``--lost``) or as they are.  Peak
RSS is the child's ``ru_maxrss``.

    uv run --frozen python bench/bench_repair_index.py --workdir /tmp/repair --entries 2000000 \\
        [--rounds 2] [--lost]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PER_PACK = 20_000


def build(repo_dir: Path, entries: int) -> None:
    from vmkeep.storage.index import encode_index
    from vmkeep.storage.pack import PackBuilder, pack_key
    from vmkeep.storage.repository import Repository

    repo = Repository.init(str(repo_dir))
    version = {1: 1, 2: 2, 3: 2}.get(repo.config.version, 3)
    done = 0
    while done < entries:
        builder = PackBuilder(version)
        for _ in range(min(PER_PACK, entries - done)):
            builder.add(os.urandom(32), 0, b"x", 1)
        pack_id, data, written = builder.finish()
        repo.backend.put(pack_key(pack_id), data)
        key, index = encode_index([(pack_id, e) for e in written], repo.index_version)
        repo.backend.put(key, index)
        done += len(written)


CHILD = """
import json, resource, sys, time
from vmkeep.storage.repair import repair_index
from vmkeep.storage.repository import Repository
started = time.perf_counter()
report = repair_index(Repository.open(sys.argv[1]))
print(json.dumps({"wall_s": round(time.perf_counter() - started, 2),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "entries": report.entries, "packs": report.packs,
                  "indexes_written": report.indexes_written,
                  "indexes_deleted": report.indexes_deleted}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--entries", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lost", action="store_true", help="delete the index files first")
    args = parser.parse_args()
    repo_dir = args.workdir / f"repo-{args.entries}"
    if not (repo_dir / "config").exists():
        started = time.perf_counter()
        build(repo_dir, args.entries)
        print(f"built {args.entries} entries in {time.perf_counter() - started:.1f} s", flush=True)
    for _ in range(args.rounds):
        if args.lost:
            for f in (repo_dir / "index").iterdir():
                f.unlink()
        out = subprocess.run([sys.executable, "-c", CHILD, str(repo_dir)], check=True,
                             capture_output=True, text=True).stdout
        print(json.dumps({"load": os.getloadavg()[0], **json.loads(out)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
