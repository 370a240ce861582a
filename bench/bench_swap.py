"""Benchmark: what ``backup image --exclude-swap`` saves on a disk whose guest has a swap
partition full of old pages.

Usage::

    PREFECT_API_URL= uv run python bench/bench_swap.py [--data-mib 1024] [--swap-mib 1024]
        [--workdir DIR]

Builds one raw disk image with an MBR: partition 1 holds ``--data-mib`` MiB of seeded random data
(an incompressible file system), partition 2 is a Linux swap partition (``mkswap``) of
``--swap-mib`` MiB filled with seeded random pages, as a guest's swap looks after it has paged.
Backs it up into two fresh repositories, once plain and once with ``--exclude-swap``, and prints
each run's wall time and its summary's ``bytes_read``, ``bytes_excluded`` and ``bytes_stored``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20


def _fill(f: object, mib: int, seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(mib):
        f.write(rnd.randbytes(MiB))  # type: ignore[attr-defined]


def build(path: Path, data_mib: int, swap_mib: int) -> None:
    swap = path.with_suffix(".swap")
    with open(swap, "wb") as f:
        _fill(f, swap_mib, 2)
    subprocess.run(["mkswap", str(swap)], check=True, capture_output=True)
    mbr = bytearray(512)
    parts = [(0x83, 2048, data_mib * 2048), (0x82, 2048 + data_mib * 2048, swap_mib * 2048)]
    for i, (ptype, start, count) in enumerate(parts):
        struct.pack_into("<B3sB3sII", mbr, 446 + 16 * i, 0, b"\xff\xff\xff", ptype,
                         b"\xff\xff\xff", start, count)
    mbr[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(mbr)
        f.seek(MiB)
        _fill(f, data_mib, 1)
        with open(swap, "rb") as src:
            while block := src.read(16 * MiB):
                f.write(block)
    swap.unlink()


def vmkeep(*args: str, repo: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VMKEEP_REPO=str(repo), PREFECT_API_URL="",
               VMKEEP_STATE_DIR=str(repo.parent / "vmkeep-state"))  # a fresh licence state
    return subprocess.run([sys.executable, "-m", "vmkeep.cli", *args], capture_output=True,
                          text=True, env=env, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-mib", type=int, default=1024)
    ap.add_argument("--swap-mib", type=int, default=1024)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="bench-swap-"))
    disk = work / "disk.img"
    build(disk, args.data_mib, args.swap_mib)
    print(f"disk: {disk.stat().st_size / MiB:.0f} MiB ({args.data_mib} MiB data, "
          f"{args.swap_mib} MiB swap partition)")
    print(f"{'run':<16} {'wall s':>7} {'read MiB':>9} {'excluded MiB':>13} {'stored MiB':>11}")
    for label, extra in (("plain", []), ("--exclude-swap", ["--exclude-swap"])):
        repo = work / f"repo-{len(extra)}"
        vmkeep("init", repo=repo)
        os.sync()
        started = time.monotonic()
        done = vmkeep("backup", "image", str(disk), "--name", "d", "--json", *extra, repo=repo)
        wall = time.monotonic() - started
        s = json.loads(done.stdout)
        print(f"{label:<16} {wall:>7.2f} {s['bytes_read'] / MiB:>9.1f} "
              f"{s['bytes_excluded'] / MiB:>13.1f} {s['bytes_stored'] / MiB:>11.1f}")
    subprocess.run(["rm", "-rf", str(work)], check=True)


if __name__ == "__main__":
    main()
