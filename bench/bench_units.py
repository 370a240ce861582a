"""Compression units (repository format version 4) against per-piece compression (version 3),
measured on real backups of one image, in one process, alternating rounds.

For each configuration — ``v3 L1`` (each piece compressed on its own at zstd-1, what version 3
stores), ``v4 L1`` (a frame's new pieces compressed together at zstd-1, the version-4 default
while the backup is CPU-bound) and ``v4 L3`` (the same at zstd-3, the level the data path
chooses while it waits for reads; here forced with the repository level) — a fresh repository
backs the image up (``backup_disk``, the CLI's data path without the CLI) and restores it; the
table gives the repository's bytes (packs, index, manifest), the process CPU seconds
(user + system, all threads: ``time.process_time``) of the backup and of the restore, and
whether the restore is bit-identical.  CPU seconds and bytes are robust on a shared machine;
wall seconds are printed with the load for reference only.

    uv run --frozen python bench/bench_units.py --workdir bench-work [--size-gib 1] \
        [--rounds 2] [--warmup 1] [--image PATH] [--configs v3:1,v4:1,v4:3]

The image is ``bench_image.py``'s benchmark image (built once in the workdir, reused).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import build_image

from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.repository import Repository


def tree_bytes(root: Path, prefix: str) -> int:
    return sum(p.stat().st_size for p in (root / prefix).rglob("*") if p.is_file())


def sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def one(work: Path, image: Path, version: int, level: int) -> dict[str, float]:
    root = work / f"repo-v{version}-l{level}"
    shutil.rmtree(root, ignore_errors=True)
    repo = Repository.init(str(root), compression_level=level, version=version)
    load = os.getloadavg()[0]
    cpu, wall = time.process_time(), time.perf_counter()
    with open(image, "rb") as f:
        result = backup_disk(repo, f, image.stat().st_size, name=image.name)
    point = commit_point(repo, "bench", [result])
    backup_cpu, backup_wall = time.process_time() - cpu, time.perf_counter() - wall
    out = work / "restored.img"
    out.unlink(missing_ok=True)
    fresh = Repository.open(str(root))
    cpu, wall = time.process_time(), time.perf_counter()
    restore_disk(fresh, fresh.load_point(point.id), 0, str(out), overwrite=True)
    restore_cpu, restore_wall = time.process_time() - cpu, time.perf_counter() - wall
    identical = sha(out) == sha(image)
    out.unlink()
    row = {
        "packs": tree_bytes(root, "packs"),
        "index": tree_bytes(root, "index"),
        "manifests": tree_bytes(root, "manifests"),
        "backup_cpu": backup_cpu,
        "backup_wall": backup_wall,
        "restore_cpu": restore_cpu,
        "restore_wall": restore_wall,
        "load": load,
        "units": result.stats.units_new,
        "pieces": result.stats.pieces_new,
        "identical": float(identical),
    }
    fresh.close()
    repo.close()
    shutil.rmtree(root)
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default="v3:1,v4:1,v4:3")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unrecorded backups first (imports, allocator, page cache)")
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VMKEEP_STATE_DIR", str(work / "state"))
    image = args.image or build_image(work, args.size_gib)
    configs = [(int(v.lstrip("v")), int(lv)) for v, lv in
               (c.split(":") for c in args.configs.split(","))]
    print(f"image {image} ({image.stat().st_size >> 20} MiB); {os.cpu_count()} cores; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    rows: dict[tuple[int, int], list[dict[str, float]]] = {c: [] for c in configs}
    for _ in range(args.warmup):
        one(work, image, *configs[0])
    for rnd in range(args.rounds):
        for version, level in configs if rnd % 2 == 0 else list(reversed(configs)):
            row = one(work, image, version, level)
            rows[(version, level)].append(row)
            print(f"round {rnd + 1} v{version} L{level}: {row}", flush=True)
    print("\n| configuration | repository MiB (packs + index + manifest) | backup CPU s | "
          "restore CPU s | backup wall s | load | units | pieces | restore identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (version, level), got in rows.items():
        def med(key: str, got: list[dict[str, float]] = got) -> float:
            return statistics.median(r[key] for r in got)

        total = med("packs") + med("index") + med("manifests")
        print(f"| v{version} zstd-{level} | {total / 2**20:.1f} ({med('packs') / 2**20:.1f} + "
              f"{med('index') / 2**20:.2f} + {med('manifests') / 2**20:.2f}) | "
              f"{med('backup_cpu'):.2f} | {med('restore_cpu'):.2f} | {med('backup_wall'):.1f} | "
              f"{med('load'):.1f} | {med('units'):.0f} | {med('pieces'):.0f} | "
              f"{all(r['identical'] for r in got)} |")
    print(f"\nmedians of {args.rounds} rounds (order alternating); load "
          f"{os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
