"""What a frame already stored costs when it is met again without a previous restore point.

A clone's first backup, an active full or a disk whose scan has no parent reads frames the
repository already holds.  Repository format 4 hashes such a frame whole and finds it by that
id; format 5 (recipe ids, docs/format.md "Why recipe ids") cuts it into pieces and hashes them
before it finds the frame by its recipe.  This backs the benchmark image (``bench_image.py``'s,
built once in the workdir) up into a fresh repository of each format, then ``--rounds`` more
times under another name with no parent (nothing new is stored), in-process (``backup_disk``,
the CLI's data path), and prints wall and process CPU seconds of those re-reads per format,
alternating formats round by round.

    uv run --frozen python bench/bench_known_frames.py --workdir /tmp/known [--size-gib 4] \\
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import build_image

from vmkeep.storage.disk_backup import backup_disk
from vmkeep.storage.repository import Repository


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--size-gib", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    image = build_image(args.workdir, args.size_gib)
    size = image.stat().st_size
    repos: dict[int, Repository] = {}
    times: dict[int, list[tuple[float, float]]] = {4: [], 5: []}
    with open(image, "rb") as f:
        for version in times:
            root = args.workdir / f"repo-v{version}"
            shutil.rmtree(root, ignore_errors=True)
            repos[version] = Repository.init(str(root), version=version)
            backup_disk(repos[version], f, size, name="first")  # stores the image
        for _ in range(args.rounds):
            for version, repo in repos.items():
                wall, cpu = time.perf_counter(), time.process_time()
                result = backup_disk(repo, f, size, name="again")
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                assert result.stats.bytes_stored == 0, "a re-read stored new data"
                times[version].append((wall, cpu))
    print(f"image {size >> 20} MiB, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    for version, runs in times.items():
        walls = ", ".join(f"{w:.2f}" for w, _ in runs)
        print(f"format {version}: re-read without a parent: median "
              f"{statistics.median(w for w, _ in runs):.2f} s wall ({walls}), "
              f"{statistics.median(c for _, c in runs):.2f} CPU-s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
