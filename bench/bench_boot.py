"""Boot verification benchmark: command to login prompt, and bytes fetched from the repository.

Builds the lab's ``linux-system`` disk (GPT, ext4 and a FAT boot partition that boots Debian's
kernel and a busybox initramfs to a login prompt), backs it up into a fresh repository, then runs
``vmkeep verify boot`` ``--rounds`` times (``--accel auto|kvm|tcg``) and reports the median wall
time of the whole command, QEMU's time to the prompt, and the bytes the exports fetched.

Usage: ``uv run --frozen python bench/bench_boot.py [--rounds 3] [--accel auto]``.  One JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmkeep.lab.images import build_image

VMKEEP = [sys.executable, "-m", "vmkeep.cli"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-boot-"))
    image = build_image("linux-system", 256 << 20, seed=11, hostname="linux01").path
    env = dict(os.environ, VMKEEP_REPO=str(work / "repo"), PREFECT_API_URL="")
    env["VMKEEP_STATE_DIR"] = str(work / "state")
    subprocess.run([*VMKEEP, "init"], check=True, env=env, capture_output=True)
    out = subprocess.run(
        [*VMKEEP, "backup", "image", str(image), "--name", "linux01", "--json"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    point = json.loads(out.stdout)["id"]
    walls, boots, fetched, accel = [], [], [], ""
    for _ in range(args.rounds):
        started = time.perf_counter()
        proc = subprocess.run(
            [
                *VMKEEP,
                "verify",
                "boot",
                point,
                "--accel",
                args.accel,
                "--timeout",
                "600",
                "--no-record",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        walls.append(time.perf_counter() - started)
        result = json.loads(proc.stdout)
        if not result["ok"]:
            raise SystemExit(f"boot failed: {result['reason']}")
        boots.append(result["seconds"])
        fetched.append(result["bytes_fetched"])
        accel = result["accelerator"]
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "accelerator": accel,
                "load_1min": round(os.getloadavg()[0], 1),
                "command_to_prompt_s": round(statistics.median(walls), 2),
                "qemu_to_prompt_s": round(statistics.median(boots), 2),
                "bytes_fetched": int(statistics.median(fetched)),
                "disk_bytes": 256 << 20,
            }
        )
    )


if __name__ == "__main__":
    main()
