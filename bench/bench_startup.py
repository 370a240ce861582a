"""Start-up of the quick verbs, vmkeep against restic, in one run.

A repository holding ``--points`` restore points (default 100) of a small ext4 image (each point
after a small change, so each is a real incremental), and a restic repository with as many
snapshots of the same image.  Then, ``--repeat`` times each (median reported), wall time of:

* ``vmkeep list``                     vs ``restic snapshots``
* ``vmkeep ls POINT:VOLUME/etc``      vs ``restic ls latest``
* ``vmkeep restore files`` (1 file)   vs ``restic restore latest --include <image>`` (the image
  file: restic cannot look inside a disk image, so this is only its floor)
* ``vmkeep ls`` again with ``VMKEEP_NO_CACHE=1`` (every index file read and decoded, as before
  the local index cache) vs ``restic --no-cache ls latest``

The index cache lives under ``VMKEEP_STATE_DIR`` (``<workdir>/startup/state/cache``); the first
``ls`` of a run builds it, so the medians are warm-cache numbers (like restic's, whose cache
sits in ``~/.cache/restic``).  CPU seconds (user + system of the child) are reported beside wall
time: on the shared 2-core machine wall time includes waiting for a core.

Every command is a fresh process, as a user runs it.  The 1-minute load average is printed with
each row: on the shared machine the absolute numbers move with it.

    uv run --frozen python bench/bench_startup.py --workdir bench-work [--points 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True)
    return done.stdout.strip()


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, CPU seconds of the child: user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="keep the repositories of a run")
    args = parser.parse_args()
    work = (args.workdir / "startup").resolve()
    reuse = args.reuse and (work / "repo").exists() and (work / "restic").exists()
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
    # as installed: byte-compiled modules (this machine's environment sets
    # PYTHONDONTWRITEBYTECODE, which makes every start compile ~1,000 modules), and a Prefect
    # home of its own (a shared profile naming an API would make vmkeep read Prefect's settings)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(
        PREFECT_API_URL="",
        PREFECT_HOME=str(work / "prefect-home"),
        RESTIC_PASSWORD="bench",
        VMKEEP_REPO=str(work / "repo"),
        VMKEEP_STATE_DIR=str(work / "state"),
    )
    vmkeep = [sys.executable, "-m", "vmkeep.cli"]
    restic = ["restic", "-r", str(work / "restic")]
    image = work / "fs.img"
    if not reuse:
        (work / "tree" / "etc").mkdir(parents=True)
        for n in range(200):
            (work / "tree" / "etc" / f"file{n:03}.conf").write_text(f"setting = {n}\n" * 50)
        image = work / "fs.img"
        subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(work / "tree"), str(image), "32M"],
            check=True,
            capture_output=True,
        )
        run([*vmkeep, "init"], env)
        run([*restic, "init"], env)
        print(f"making {args.points} restore points / snapshots …", flush=True)
    for n in range(0 if reuse else args.points):
        with open(image, "r+b") as f:  # a small change in the image's free space
            f.seek(30 * 1024 * 1024 + n * 4096)
            f.write(os.urandom(4096))
        run([*vmkeep, "backup", "image", str(image), "--name", "fs", "--no-prefect"], env)
        run([*restic, "backup", "-q", str(image)], env)
    out = work / "out"
    cases = [
        ("list", [*vmkeep, "list"], "snapshots", [*restic, "snapshots"]),
        (
            "ls POINT:VOLUME/etc",
            [*vmkeep, "ls", "fs@latest:disk0-whole/etc"],
            "ls latest",
            [*restic, "ls", "latest"],
        ),
        (
            "restore files (1 file)",
            [
                *vmkeep,
                "restore",
                "files",
                "fs@latest:disk0-whole/etc/file007.conf",
                "--to",
                str(out),
                "--overwrite",
            ],
            "restore latest --include <image>",
            [
                *restic,
                "restore",
                "latest",
                "--target",
                str(work / "restic-out"),
                "--include",
                str(image),
            ],
        ),
    ]
    nocache = {**env, "VMKEEP_NO_CACHE": "1"}
    cases.append(
        (
            "ls POINT:VOLUME/etc, VMKEEP_NO_CACHE=1",
            [*vmkeep, "ls", "fs@latest:disk0-whole/etc"],
            "--no-cache ls latest",
            [*restic, "--no-cache", "ls", "latest"],
        )
    )
    print(f"\nstart: {uptime()}")
    print(
        "\n| vmkeep verb | wall s | CPU s | restic verb | wall s | CPU s | load |"
        "\n|---|---|---|---|---|---|---|"
    )
    for name, vcmd, rname, rcmd in cases:
        v, r = [], []
        venv = nocache if "NO_CACHE" in name else env
        for _ in range(args.repeat):
            v.append(run(vcmd, venv))
            r.append(run(rcmd, env))
            shutil.rmtree(work / "restic-out", ignore_errors=True)
        vw, vc = (statistics.median(x[k] for x in v) for k in (0, 1))
        rw, rc = (statistics.median(x[k] for x in r) for k in (0, 1))
        print(
            f"| {name} | {vw:.2f} | {vc:.2f} | {rname} | {rw:.2f} | {rc:.2f} |"
            f" {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
    print(f"\nend: {uptime()}")
    print(f"{args.points} points; {os.cpu_count()} cores; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
