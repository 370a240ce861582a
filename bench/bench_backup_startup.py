"""Start-up of ``vmkeep backup image``: CPU seconds and wall time of whole commands on a tiny
image, where nearly all of the cost is the command's start-up (imports, CLI, job set-up).

Each round runs, for every source tree given (``LABEL=DIR``, e.g. ``main=/tmp/main-src`` made
with ``git archive main vmkeep | tar -x -C /tmp/main-src``, and ``branch=.``), in alternating
order: ``backup image --help``, an incremental ``backup image`` of an unchanged 4 MiB image
(the ``xxh3`` scan of 4 MiB) and a full one under a new name.  Every command is a fresh
process of this venv's Python, with the tree's ``vmkeep`` first on the path (the editable
install's finder is removed), bytecode cached as after an install (``PYTHONDONTWRITEBYTECODE``
is dropped and every command runs once before timing), no Prefect API (direct mode).

CPU seconds (user + system of the child) are the robust number on the shared machine; the
1-minute load average is printed with the result.

    uv run --frozen python bench/bench_backup_startup.py --workdir /tmp/bs --rounds 6 \\
        main=/tmp/main-src branch=.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RUNNER = """
import runpy, sys
src = sys.argv.pop(1)
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
sys.path.insert(0, src)
sys.argv[0] = "vmkeep"
runpy.run_module("vmkeep.cli", run_name="__main__", alter_sys=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("trees", nargs="+", help="LABEL=DIR (a directory holding vmkeep/)")
    args = parser.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    trees = [(lab, str(Path(d).resolve())) for lab, d in (t.split("=", 1) for t in args.trees)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(
        PREFECT_API_URL="",
        PREFECT_HOME=str(work / "prefect-home"),
        VMKEEP_STATE_DIR=str(work / "state"),
        VMKEEP_CONFIG_DIR=str(work / "config"),
    )
    env.pop("VMKEEP_LICENSE", None)
    image = work / "small.img"
    image.write_bytes(os.urandom(4 << 20))

    def run(src: str, argv: list[str], repo: Path) -> tuple[float, float]:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, src, *argv],
            env=dict(env, VMKEEP_REPO=str(repo)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{argv}: {err}")
        return usage.ru_utime + usage.ru_stime, wall

    steps: dict[str, Callable[[int], list[str]]] = {
        "help": lambda r: ["backup", "image", "--help"],
        "incremental": lambda r: ["backup", "image", str(image), "--name", "inc"],
        "full": lambda r: ["backup", "image", str(image), "--name", f"full{r}"],
    }
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        lab: {step: [] for step in steps} for lab, _ in trees
    }
    for lab, src in trees:  # fresh repositories; every step once untimed (bytecode cached)
        repo = work / f"repo-{lab}"
        shutil.rmtree(repo, ignore_errors=True)
        run(src, ["init"], repo)
        for argv in (steps["help"](-1), steps["incremental"](-1), steps["incremental"](-1)):
            run(src, argv, repo)
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for lab, src in trees if r % 2 == 0 else trees[::-1]:
            for step, make in steps.items():
                results[lab][step].append(run(src, make(r), work / f"repo-{lab}"))
    loads.append(os.getloadavg()[0])
    print(f"{args.rounds} rounds, 1-minute load {min(loads):.1f}-{max(loads):.1f}")
    print("| tree | command | CPU-s median (min) | wall s median (min) |")
    print("|---|---|---|---|")
    for lab, _ in trees:
        for step, runs in results[lab].items():
            cpu, wall = [c for c, _ in runs], [w for _, w in runs]
            print(
                f"| {lab} | {step} | {statistics.median(cpu):.3f} ({min(cpu):.3f}) "
                f"| {statistics.median(wall):.3f} ({min(wall):.3f}) |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
