"""In-process image restore timing: where a restore's time goes, without CLI start-up.

Restores one disk of a restore point with ``storage.disk_restore.restore_disk`` and reports wall
and CPU time, the number of pack requests and the time spent in them (summed over the fetch
threads).  Options make the causes visible one at a time:

    uv run python bench/bench_image_restore.py --repo REPO --point d@latest --to OUT.img \
        [--workers N] [--spans-per-worker N] [--cold] [--latency-ms MS] [--no-fsync] [--repeat N] \
        [--device]

``--spans-per-worker``  how far the fetches run ahead (``disk_restore.SPANS_PER_WORKER``)
``--cold``        drop the page cache first (root): packs are read from the disk
``--latency-ms``  add MS to every request, as a WAN link or an object store would
``--device``      ``--to`` is a block device: the restore of ``vmkeep restore image --device``
                  (``restore_disk_to_device``: exclusive open, staged ``O_DIRECT`` blocks, every
                  byte written); make one over a file with ``truncate -s 4G dev.img && losetup -f
                  --show dev.img`` (and ``losetup -d`` it after)
``--no-fsync``    diagnostic only: turn ``fsync``/``fdatasync`` into no-ops, then time a ``sync``
                  — what the restore would cost if, like restic and borg, it left the write-back
                  to the kernel

The repository is typically the one ``bench/bench_image.py --tools vmkeep`` leaves behind, or any
repository made with ``vmkeep init`` + ``vmkeep backup image``.  Results go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from typing import Any

from vmkeep.storage import disk_restore
from vmkeep.storage.disk_restore import restore_disk, restore_disk_to_device
from vmkeep.storage.repository import Repository


class TimedGets:
    """Wraps a backend: counts ranged ``get`` calls, adds latency, sums the time spent."""

    def __init__(self, inner: Any, latency_s: float) -> None:
        self.inner = inner
        self.latency_s = latency_s
        self.calls = 0
        self.seconds = 0.0
        self._lock = threading.Lock()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        started = time.perf_counter()
        if self.latency_s:
            time.sleep(self.latency_s)
        data: bytes = self.inner.get(key, offset, length)
        with self._lock:
            self.calls += 1
            self.seconds += time.perf_counter() - started
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--point", default="latest")
    parser.add_argument("--disk", type=int, default=0)
    parser.add_argument("--to", required=True)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--spans-per-worker", type=int, default=None)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", action="store_true", help="--to is a block device")
    args = parser.parse_args()
    if args.no_fsync:
        os.fsync = lambda fd: None  # type: ignore[assignment]
        os.fdatasync = lambda fd: None  # type: ignore[assignment]
    if args.spans_per_worker:
        disk_restore.SPANS_PER_WORKER = args.spans_per_worker
    repo = Repository.open(args.repo)
    point = repo.load_point(args.point)
    for _ in range(args.repeat):
        subprocess.run(["sync"], check=False)
        if args.cold:
            drop_caches()
        gets = TimedGets(repo.backend, args.latency_ms / 1000)
        repo.backend = gets  # type: ignore[assignment]
        started, cpu = time.monotonic(), time.process_time()
        if args.device:
            nbytes = restore_disk_to_device(repo, point, args.disk, args.to, workers=args.workers)
        else:
            nbytes = restore_disk(
                repo, point, args.disk, args.to, workers=args.workers, overwrite=True
            )
        wall, cpu = time.monotonic() - started, time.process_time() - cpu
        synced = time.monotonic()
        subprocess.run(["sync"], check=False)
        sync_s = time.monotonic() - synced
        repo.backend = gets.inner
        print(
            f"restore {nbytes / 2**30:.2f} GiB: {wall:.2f} s, CPU {cpu:.2f} s, then sync "
            f"{sync_s:.2f} s; {gets.calls} pack requests, {gets.seconds:.2f} s in them"
            f"{' (cold)' if args.cold else ''}{' (device)' if args.device else ''}"
            f"{f' (+{args.latency_ms:g} ms each)' if args.latency_ms else ''}"
            f"{' (no fsync)' if args.no_fsync else ''}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
