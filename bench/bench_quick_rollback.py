"""Quick rollback against a full disk restore, in-process, on one image.

Backs the benchmark image up (the default repository), then for each round: copies the image,
rewrites ``--percent`` % of the copy in scattered extents (``bench_image.py``'s
``scatter_changes``, as a guest would between the backup and the rollback), and puts it back
three ways, each timed (wall and process CPU) and checked bit-identical to the image:

* full restore — ``restore_disk`` of the point into a new file (what ``restore vm`` writes);
* quick rollback, CBT — ``roll_back`` over exactly the rewritten extents;
* quick rollback, compare — ``roll_back`` over the whole disk (CBT could not answer), with its
  worker threads and with one.

``--read-latency-ms N`` adds N ms to every read of the disk file in the rollbacks (a sleep, which
releases the GIL as a datastore read does): a model of a datastore over NFS or the mover's SCSI
path, where each read waits for the network and the array — what the worker threads overlap.

    uv run --frozen python bench/bench_quick_rollback.py --workdir bench-work --size-gib 1 \\
        --percent 1 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import build_image, scatter_changes

from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.disk_rollback import WORKERS, ReadAt, read_at, roll_back
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import Repository

MIB = 2**20


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    started, cpu = time.monotonic(), time.process_time()
    out = fn()
    return time.monotonic() - started, time.process_time() - cpu, out


def same(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(8 * MIB), fb.read(8 * MIB)
            if x != y:
                return False
            if not x:
                return True


def _slow_reads(latency_s: float) -> ReadAt:
    """A reader of the disk file for ``roll_back`` that waits ``latency_s`` before each read."""

    def slow(fd: int, offset: int, length: int) -> bytes:
        time.sleep(latency_s)
        return read_at(fd, offset, length)

    return slow


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"))
    ap.add_argument("--size-gib", type=int, default=1)
    ap.add_argument("--percent", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--read-latency-ms", type=float, default=0.0)
    args = ap.parse_args()
    read = _slow_reads(args.read_latency_ms / 1000) if args.read_latency_ms else read_at
    args.workdir.mkdir(parents=True, exist_ok=True)
    image = build_image(args.workdir, args.size_gib)
    size = image.stat().st_size
    root = args.workdir / "rollback-repo"
    shutil.rmtree(root, ignore_errors=True)
    repo = Repository.init(str(root))
    with open(image, "rb") as f:
        point = commit_point(repo, "d", [backup_disk(repo, f, size)])
    work = args.workdir / "rollback-disk.img"
    restored = args.workdir / "rollback-full.img"
    rows: dict[str, list[tuple[float, float, int]]] = {}

    def roll(areas: list[tuple[int, int]] | None, workers: int = WORKERS) -> int:
        fd = os.open(work, os.O_RDWR)
        try:
            with PointReader(repo, repo.load_point(point.id), 0) as reader:
                return roll_back(reader, fd, areas, workers=workers, read=read).bytes_written
        finally:
            os.close(fd)

    def full() -> int:
        restored.unlink(missing_ok=True)
        restore_disk(repo, repo.load_point(point.id), 0, str(restored))
        return size

    for _ in range(args.rounds):
        for label in ("full restore", "quick rollback, CBT", "quick rollback, compare",
                      "quick rollback, compare, 1 thread"):
            shutil.copyfile(image, work)
            extents = [(o, n) for o, n in scatter_changes(work, args.percent / 100, seed=7)]
            os.sync()
            if label == "full restore":
                wall, cpu, written = timed(full)
                ok = same(restored, image)
            else:
                areas = extents if label.endswith("CBT") else None
                workers = 1 if label.endswith("1 thread") else WORKERS
                wall, cpu, written = timed(
                    lambda a=areas, w=workers: roll(a, w))  # type: ignore[misc]
                ok = same(work, image)
            assert ok, f"{label}: not bit-identical"
            rows.setdefault(label, []).append((wall, cpu, int(written)))  # type: ignore[arg-type]
    print(f"image {size / MIB:.0f} MiB, {args.percent} % rewritten, medians of {args.rounds}, "
          f"read latency {args.read_latency_ms} ms, {WORKERS} workers, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| way back | wall s | CPU s | MiB written |")
    print("|---|---|---|---|")
    for label, got in rows.items():
        print(f"| {label} | {statistics.median(g[0] for g in got):.2f} | "
              f"{statistics.median(g[1] for g in got):.2f} | "
              f"{statistics.median(g[2] for g in got) / MIB:.1f} |")
    for p in (work, restored):
        p.unlink(missing_ok=True)
    shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
