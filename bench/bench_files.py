"""Benchmark: file-level backups of a large tree, vmkeep against restic and borg, in one run.

Usage::

    PREFECT_API_URL= uv run python bench/bench_files.py [--files 100000] [--large 4] [--workdir DIR]
        [--rounds N] [--tools vmkeep,restic,borg]

Builds ~``--files`` small files (100 B - 8 KiB, half of them compressible text) in 1,000
directories plus ``--large`` files of 64 MiB, then for each tool: first backup, no-change
incremental, incremental after rewriting 1 % of the small files, full restore.  Prints wall time,
peak RSS of the process tree (psutil, sampled every 20 ms) and the ratios restic/vmkeep and
borg/vmkeep; with ``--rounds N`` every round starts from new, empty repositories (same tree; the
1 % change picks the same files with new contents) and the table shows the medians.  vmkeep runs
its CLI in direct mode (no Prefect API); restic uses its default
compression (auto), borg ``zstd,1``.  Page cache is warm for every tool alike, and ``sync`` runs
before every timed command.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
WORDS = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()


def build(src: Path, nfiles: int, nlarge: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for i in range(nfiles):
        d = src / f"d{i % 1000:04d}"
        if i < 1000:
            d.mkdir(parents=True)
        size = rng.randint(100, 8192)
        if i % 2:
            data = b" ".join(rng.choice(WORDS) for _ in range(size // 5))[:size]
        else:
            data = os.urandom(size)
        (d / f"f{i:06d}.dat").write_bytes(data)
    for j in range(nlarge):
        with open(src / f"large{j}.bin", "wb") as f:
            for _ in range(64):
                f.write(os.urandom(1 << 20))


def change(src: Path, nfiles: int, fraction: float = 0.01, seed: int = 2) -> int:
    rng = random.Random(seed)
    picked = rng.sample(range(nfiles), int(nfiles * fraction))
    for i in picked:
        p = src / f"d{i % 1000:04d}" / f"f{i:06d}.dat"
        p.write_bytes(os.urandom(rng.randint(100, 8192)))
    return len(picked)


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """Run ``cmd``; return (seconds, peak RSS MiB of its process tree).  Dirty pages are
    written back first, so no tool pays for the previous one's writes (or the clean-up's)."""
    os.sync()
    peak = 0
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            p = psutil.Process(proc.pid)
            while not done.is_set():
                rss = p.memory_info().rss + sum(
                    c.memory_info().rss for c in p.children(recursive=True)
                )
                peak = max(peak, rss)
                time.sleep(0.02)
        except psutil.Error:
            pass

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    elapsed = time.monotonic() - started
    done.set()
    t.join()
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return elapsed, peak / 2**20


def tools(work: Path, src: Path) -> dict[str, dict[str, list[str]]]:
    vk = [sys.executable, "-m", "vmkeep.cli"]
    vrepo, rrepo, brepo = work / "vmkeep-repo", work / "restic-repo", work / "borg-repo"
    restore_py = (
        "import sys; from vmkeep.flows.run import run_flow;"
        "from vmkeep.flows.restore_file_point import restore_file_point as f;"
        "s = run_flow(f, False, repo=sys.argv[1], point='bench@latest', target=sys.argv[2]);"
        "sys.exit(0 if s['ok'] else 1)"
    )
    return {
        "vmkeep": {
            "init": [*vk, "init", "--repo", str(vrepo)],
            "backup": [*vk, "backup", "files", str(src), "--name", "bench", "--repo", str(vrepo),
                       "--json"],
            "restore": [sys.executable, "-c", restore_py, str(vrepo), str(work / "out-vmkeep")],
        },
        "restic": {
            "init": ["restic", "init", "-r", str(rrepo)],
            "backup": ["restic", "backup", "-q", "-r", str(rrepo), str(src)],
            "restore": ["restic", "restore", "latest", "-r", str(rrepo), "--target",
                        str(work / "out-restic")],
        },
        "borg": {
            "init": ["borg", "init", "-e", "none", str(brepo)],
            "backup": ["borg", "create", "--compression", "zstd,1", f"{brepo}::{{now:%H%M%S%f}}",
                       str(src)],
            "restore": ["sh", "-c", f"borg extract {brepo}::$(borg list --last 1 --short {brepo})"],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tools", default="vmkeep,restic,borg")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-files-", dir=args.workdir))
    src = work / "src"
    env = dict(os.environ, PREFECT_API_URL="", RESTIC_PASSWORD="bench",
               BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",  # one local source: community tier
               VMKEEP_STATE_DIR=str(work / "vmkeep-state"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with compiled bytecode, as installed
    subprocess.run([sys.executable, "-m", "vmkeep.cli", "--help"], env=env, capture_output=True)
    t0 = time.monotonic()
    build(src, args.files, args.large)
    size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    print(f"tree: {args.files} small files + {args.large} x 64 MiB, {size / 2**20:.0f} MiB, "
          f"built in {time.monotonic() - t0:.0f} s; {os.cpu_count()} cores", flush=True)
    every = tools(work, src)
    names = [t for t in args.tools.split(",") if t in every]
    cmds = {t: every[t] for t in names}
    results: dict[str, dict[str, list[tuple[float, float]]]] = {t: {} for t in cmds}
    steps = ["first backup", "no-change incremental", "1% changed incremental", "full restore"]
    for rnd in range(args.rounds):
        if args.rounds > 1:
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
        for tool in cmds:
            for name in (f"{tool}-repo", f"out-{tool}"):
                shutil.rmtree(work / name, ignore_errors=True)
        for c in cmds.values():
            run(c["init"], env)
        for step in steps:
            if step == "1% changed incremental":
                change(src, args.files)
            for tool, c in cmds.items():
                if step == "full restore":
                    out = work / f"out-{tool}"
                    out.mkdir()
                    res = run(c["restore"], env, cwd=out)
                else:
                    res = run(c["backup"], env)
                results[tool].setdefault(step, []).append(res)
                print(f"  {tool:7s} {step:24s} {res[0]:7.2f} s  {res[1]:6.0f} MiB", flush=True)

    def med(tool: str, step: str) -> tuple[float, float]:
        runs = results[tool][step]
        return statistics.median(r[0] for r in runs), max(r[1] for r in runs)

    print()
    label = "median s" if args.rounds > 1 else "s"
    print("| step | " + " | ".join(f"{t} {label}" for t in cmds) + " | "
          + " | ".join(f"{t}/vmkeep" for t in cmds if t != "vmkeep")
          + f" | peak RSS MiB ({' / '.join(cmds)}) |")
    print("| --- |" + " ---: |" * (2 * len(cmds) - 1) + " --- |")
    for step in steps:
        v = med("vmkeep", step)[0] if "vmkeep" in cmds else float("nan")
        row = [med(t, step) for t in cmds]
        print(f"| {step} | " + " | ".join(f"{r[0]:.2f}" for r in row) + " | "
              + " | ".join(f"{med(t, step)[0] / v:.2f}x" for t in cmds if t != "vmkeep")
              + " | " + " / ".join(f"{r[1]:.0f}" for r in row) + " |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
