"""NBD export benchmark: start-up, first-byte latency and streaming rate of ``vmkeep export --nbd``.

Builds a disk image of ``--size-mib`` MiB (three quarters random data, one quarter never written),
backs it up into a fresh repository, then measures, ``--rounds`` times each:

- ``start``: NbdExport.start() until nbdkit accepts connections (opens repository and point);
- ``first_byte``: one 4 KiB read at a random offset by ``qemu-io`` (a new connection, qemu-io's
  own start-up included);
- ``stream``: ``nbdcopy`` of the whole export to /dev/null (MB/s of the disk's size), and the
  bytes the plugin fetched are compared with the repository's stored bytes;
- ``restore``: ``vmkeep restore image`` of the same point to a file, for comparison.

Usage: ``uv run --frozen python bench/bench_nbd.py [--size-mib 1024] [--rounds 3] [--workdir DIR]``.
Prints one JSON object; docs/performance.md keeps the numbers with the command and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmkeep.browse.nbd import NbdExport

VMKEEP = [sys.executable, "-m", "vmkeep.cli"]


def build_image(path: Path, size_mib: int) -> None:
    rng = random.Random(7)
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
        for mib in range(size_mib):
            if mib % 4 != 3:
                f.seek(mib << 20)
                f.write(rng.randbytes(1 << 20))


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-nbd-"))
    work.mkdir(parents=True, exist_ok=True)
    image, repo = work / "disk.img", work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    build_image(image, args.size_mib)
    env = dict(os.environ, VMKEEP_REPO=str(repo), PREFECT_API_URL="",
               VMKEEP_STATE_DIR=str(work / "vmkeep-state"))  # a fresh installation's licence state
    subprocess.run([*VMKEEP, "init"], check=True, env=env, capture_output=True)
    out = subprocess.run(
        [*VMKEEP, "backup", "image", str(image), "--name", "bench", "--json"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    point = json.loads(out.stdout)["id"]
    starts, firsts, streams, restores = [], [], [], []
    rng = random.Random(1)
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        export = NbdExport(str(repo), point, 0, env=env).start()
        starts.append(time.perf_counter() - t0)
        try:
            offset = rng.randrange(0, (args.size_mib << 20) - 4096, 4096)
            firsts.append(
                timed(["qemu-io", "-f", "raw", "-r", "-c", f"read {offset} 4k", export.uri], env)
            )
            streams.append(timed(["nbdcopy", export.uri, "null:"], env))
        finally:
            export.stop()
        target = work / "restored.img"
        target.unlink(missing_ok=True)
        restores.append(timed([*VMKEEP, "restore", "image", point, "--to", str(target)], env))
    size_mb = (args.size_mib << 20) / 1e6
    result = {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "load_1min": os.getloadavg()[0],
        "start_s": round(statistics.median(starts), 3),
        "first_byte_s": round(statistics.median(firsts), 3),
        "stream_s": round(statistics.median(streams), 3),
        "stream_mb_s": round(size_mb / statistics.median(streams), 1),
        "restore_s": round(statistics.median(restores), 3),
        "restore_mb_s": round(size_mb / statistics.median(restores), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
