"""Image backup benchmark: vmkeep against restic and borg on the same disk image, in one run.

A ~4 GiB raw disk holding an ext4 file system (``mke2fs -d``) with ~1.6 GiB of system files,
~0.7 GiB of incompressible data and free (zero) space.  Each tool backs the image file up in full,
then again after ~1 % scattered changes (random writes of 4 KiB–1 MiB), then restores it.
vmkeep's incremental is measured twice: with a changed-extents list (what CBT provides) and
without one (xxh3 scan).  Wall times, throughput, ratios and each command's peak RSS are printed
as a Markdown table for docs/performance.md.

    uv run python bench/bench_image.py [--workdir bench-work] [--size-gib 4] \
        [--tools vmkeep,restic,borg] [--rounds N] [--cold-restore] [--full-only] \
        [--as-checked-out]

Every step also reports its CPU time (user + system, from ``/usr/bin/time``) and the 1-minute
load average when it started: on a shared machine the wall times of tools run one after another
are only comparable at similar load, while CPU seconds barely depend on it.  With ``--rounds N``
the tools run N times in turn (vmkeep, restic, borg, vmkeep, …) and the tables show medians.
vmkeep's restored image is compared with the source byte for byte (outside the timing).

Fairness notes: restic always encrypts (AES-256-CTR + Poly1305); borg runs with
``--encryption none -C zstd,3`` (the configuration the brief measured); vmkeep's repository is not
encrypted.  All three read the same file from the page cache after a warm-up read.  vmkeep runs
as installed, its bytecode cached (:func:`installed`; ``--as-checked-out`` keeps the shell's
``PYTHONDONTWRITEBYTECODE``).  Restores:
vmkeep ``fsync``s the restored image before it exits, restic 0.14 and borg 1.2 do not (their data
is still being written back when they exit; seen with ``strace -e fsync``), so each restore is
also reported as ``restore + sync`` — the time until the restored data is on disk.  With
``--cold-restore`` the page cache is dropped before every restore (root): the repository is then
read from the disk, as in any restore that does not follow its backup within minutes.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SYSTEM_TREES = ["/usr/share", "/usr/bin", "/usr/lib/python3", "/usr/lib/x86_64-linux-gnu"]


@dataclass
class Run:
    tool: str
    step: str
    seconds: float
    peak_rss_mb: float
    nbytes: int
    cpu_s: float = 0.0
    load: float = 0.0

    @property
    def mb_s(self) -> float:
        return self.nbytes / self.seconds / 1e6


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB of the process tree's largest, stdout)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace"))
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    # /usr/bin/time would add a process; ru_maxrss of waited children is the max over them
    return elapsed, 0.0, out.decode()


def with_rss(cmd: list[str]) -> list[str]:
    return ["/usr/bin/time", "-f", "VMKEEP_RSS_KB=%M VMKEEP_CPU_S=%U+%S", *cmd]


def loadavg() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


COLD = False  # --cold-restore: drop the page cache before each restore


def drop_caches() -> None:
    """Empty the page cache (root only): the repository is then read from the disk, as in any
    restore that does not follow its backup within minutes."""
    subprocess.run(["sync"], check=False)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold-restore needs root: {exc}") from None


def run_step(
    tool: str, step: str, cmd: list[str], nbytes: int, env: dict[str, str], *, durable: bool = False
) -> list[Run]:
    """Run one timed step.  ``durable``: also time a ``sync`` right after, and return a second
    run named ``<step> + sync`` — restic and borg leave their restored files in the page cache
    (no ``fsync``; checked with ``strace``), vmkeep ``fsync``s the image before it exits."""
    subprocess.run(["sync"], check=False)  # no write-back of the previous step in this one
    if durable and COLD:
        drop_caches()
    load = loadavg()
    started = time.monotonic()
    proc = subprocess.run(with_rss(cmd), env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    sync_s = 0.0
    if durable:
        synced = time.monotonic()
        subprocess.run(["sync"], check=False)
        sync_s = time.monotonic() - synced
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{tool} {step} failed ({proc.returncode})")
    rss, cpu = 0, 0.0
    for line in proc.stderr.splitlines():
        if "VMKEEP_RSS_KB=" in line:
            fields = dict(f.split("=") for f in line.split())
            rss = int(fields["VMKEEP_RSS_KB"])
            cpu = sum(float(x) for x in fields["VMKEEP_CPU_S"].split("+"))
    run = Run(tool, step, elapsed, rss / 1024, nbytes, cpu, load)
    print(
        f"  {tool:7} {step:22} {elapsed:7.2f} s  {run.mb_s:8.1f} MB/s  {run.peak_rss_mb:6.0f} MB"
        f"  cpu {cpu:6.2f} s  load {load:4.2f}"
        + (f"  then sync {sync_s:5.2f} s" if durable else ""),
        flush=True,
    )
    if not durable:
        return [run]
    return [run, Run(tool, f"{step} + sync", elapsed + sync_s, rss / 1024, nbytes, cpu, load)]


def build_image(work: Path, size_gib: int) -> Path:
    image = work / "disk.img"
    if image.exists() and image.stat().st_size == size_gib << 30:
        return image
    tree = work / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    budget = int(1.6 * (size_gib / 4) * (1 << 30))
    used = 0
    for source in SYSTEM_TREES:
        for dirpath, _dirnames, filenames in os.walk(source):
            for name in filenames:
                src = os.path.join(dirpath, name)
                if os.path.islink(src) or not os.path.isfile(src):
                    continue
                size = os.path.getsize(src)
                if used + size > budget:
                    break
                dst = tree / os.path.relpath(src, "/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                used += size
    rng = random.Random(1)
    with open(tree / "random.bin", "wb") as f:
        for _ in range(int(0.7 * (size_gib / 4) * 1024)):
            f.write(rng.randbytes(1 << 20))
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(image), f"{size_gib}G"],
        check=True,
    )
    shutil.rmtree(tree)
    return image


def build_pair(work: Path, size_mib: int) -> list[Path]:
    """Two ext4 images from the same tree; a different-sized file is written first in each."""
    tree = work / "pair-tree"
    budget = int(size_mib * 0.4) << 20
    if not tree.exists():
        used = 0
        for source in SYSTEM_TREES:
            for dirpath, _dirs, names in os.walk(source):
                for name in sorted(names):
                    src = os.path.join(dirpath, name)
                    if os.path.islink(src) or not os.path.isfile(src):
                        continue
                    size = os.path.getsize(src)
                    if used + size > budget:
                        break
                    dst = tree / "data" / os.path.relpath(src, "/")
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
                    used += size
    out = []
    for label, first_kib in (("a", 10 * 1024 + 123), ("b", 37 * 1024 + 9)):
        image = work / f"pair-{label}.img"
        out.append(image)
        if image.exists():
            continue
        # mke2fs -d copies a directory's entries in name order (e2fsprogs >= 1.46.6 sorts
        # them): "0-first" is written before the shared tree "1-data" (hard links, no copy)
        src = work / f"pair-src-{label}"
        shutil.rmtree(src, ignore_errors=True)
        (src / "0-first").mkdir(parents=True)
        rng = random.Random(label)
        (src / "0-first" / "extra.bin").write_bytes(rng.randbytes(first_kib << 10))
        subprocess.run(["cp", "-al", str(tree / "data"), str(src / "1-data")], check=True)
        subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(src), str(image), f"{size_mib}M"],
            check=True,
        )
        shutil.rmtree(src)
    return out


def build_dense(work: Path, size_mib: int) -> Path:
    """A dense image: the pair's first image with every all-zero 1 MiB frame filled with file
    data from elsewhere in the image, taken at a 4 KiB-aligned offset that is not 1 MiB-aligned
    (what free space holding deleted old copies of files looks like)."""
    image = work / "dense.img"
    if image.exists():
        return image
    source = build_pair(work, size_mib)[0]
    shutil.copyfile(source, image)
    rng = random.Random(7)
    frame = 1 << 20
    with open(source, "rb") as src:
        data = src.read()
    used = [o for o in range(0, len(data) - 2 * frame, frame) if any(data[o : o + frame])]
    with open(image, "r+b") as f:
        for off in range(0, len(data), frame):
            if any(data[off : off + frame]):
                continue
            start = rng.choice(used) + rng.randrange(1, 256) * 4096
            f.seek(off)
            f.write(data[start : start + frame][: len(data) - off])
    return image


def scatter_changes(image: Path, fraction: float, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    size = image.stat().st_size
    budget = int(size * fraction)
    extents = []
    with open(image, "r+b") as f:
        while budget > 0:
            length = min(budget, rng.choice([4096, 16384, 65536, 262144, 1 << 20]))
            offset = rng.randrange(0, size - length) & ~4095
            f.seek(offset)
            f.write(rng.randbytes(length))
            extents.append([offset, length])
            budget -= length
    return extents


def repo_bytes(repo: Path) -> int:
    """Bytes of every file in a repository (packs, indexes, manifests, locks, config …)."""
    return sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())


def backup_cmd(tool: str, repo: Path, image: Path, archive: str) -> list[str]:
    if tool.startswith("vmkeep"):
        return [sys.executable, "-m", "vmkeep.cli", "backup", "image", str(image), "--name",
                image.stem, "--repo", str(repo)]
    if tool == "restic":
        return ["restic", "-r", str(repo), "backup", "-q", str(image)]
    return ["borg", "create", "-C", "zstd,3", f"{repo}::{archive}", str(image)]


def init_repo(tool: str, repo: Path, env: dict[str, str]) -> None:
    shutil.rmtree(repo, ignore_errors=True)
    cmd = {
        "vmkeep": [sys.executable, "-m", "vmkeep.cli", "init", "--repo", str(repo)],
        # version 1: whole 1 MiB chunks, what vmkeep stored before content-defined pieces
        "vmkeep-fixed": [sys.executable, "-m", "vmkeep.cli", "init", "--repo", str(repo),
                         "--image-cdc", "0"],
        "vmkeep-cdc16": [sys.executable, "-m", "vmkeep.cli", "init", "--repo", str(repo),
                         "--image-cdc", "16"],
        # version 2: pieces cut from each frame edge (no lookback), what vmkeep did before
        "vmkeep-v2": [sys.executable, "-c", "import sys; from vmkeep.storage.repository import "
                      "Repository; Repository.init(sys.argv[1], image_cdc={'min': 16384, "
                      "'avg': 65536, 'max': 262144, 'lookback': 0})", str(repo)],
        # version 4: frames named by their bytes (hashed whole, then as pieces), before recipe ids
        "vmkeep-v4": [sys.executable, "-c", "import sys; from vmkeep.storage.repository import "
                      "Repository; Repository.init(sys.argv[1], version=4)", str(repo)],
        "restic": ["restic", "-r", str(repo), "init"],
        "borg": ["borg", "init", "--encryption", "none", str(repo)],
    }[tool]
    subprocess.run(cmd, env=env, check=True, capture_output=True)


def dedupe_runs(work: Path, tools: list[str], size_mib: int, env: dict[str, str]) -> None:
    """Repository sizes, in one run: the benchmark image; two separately built ext4 images with
    the same files at different offsets, backed up one after the other into one repository; a
    dense image.  Each backup is timed like the other steps."""
    bench = build_image(work, max(1, size_mib >> 10))
    pair_a, pair_b = build_pair(work, size_mib)
    dense = build_dense(work, size_mib)
    for image in (bench, pair_a, pair_b, dense):  # warm the page cache
        subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)
    rows = []
    for tool in tools:
        print(f"{tool}:", flush=True)
        repo = work / f"dedupe-{tool}"
        sizes = {}
        for images in ([bench], [pair_a, pair_b], [dense]):
            init_repo(tool, repo, env)
            before = repo_bytes(repo)
            for n, image in enumerate(images):
                run_step(tool, f"full {image.stem}", backup_cmd(tool, repo, image, f"a{n}"),
                         image.stat().st_size, env)
                after = repo_bytes(repo)
                sizes[image.stem] = after - before
                before = after
        shutil.rmtree(repo, ignore_errors=True)
        rows.append((tool, sizes))
    print("\n| tool | benchmark image MiB | pair: first MiB | pair: second MiB | second / first |"
          " dense image MiB |\n|---|---|---|---|---|---|")
    for tool, s in rows:
        print(f"| {tool} | {s[bench.stem] / 2**20:.1f} | {s[pair_a.stem] / 2**20:.1f} | "
              f"{s[pair_b.stem] / 2**20:.1f} | {s[pair_b.stem] / s[pair_a.stem]:.1%} | "
              f"{s[dense.stem] / 2**20:.1f} |")
    print(f"\nimages {size_mib} MiB each; {os.cpu_count()} cores; load {loadavg():.2f} at the end")


def installed(env: dict[str, str]) -> dict[str, str]:
    """``env`` for vmkeep as installed: Python may cache compiled bytecode.

    pip and the distributions' packages compile a package's modules when they install it; a
    development checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (set in this project's shells)
    instead compiles every module it imports again in each command — 0.45–0.85 CPU-s of
    single-threaded start-up per ``vmkeep backup`` on the benchmark machine
    (docs/performance.md), which no installed vmkeep pays."""
    return {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}


def warm_bytecode(work: Path, pristine: Path, vmkeep: list[str], env: dict[str, str]) -> None:
    """Run each vmkeep step the benchmark times once on a 16 MiB image (untimed), so that the
    bytecode of every module they import is cached, as after an install."""
    small = work / "warm.img"
    with open(pristine, "rb") as src, open(small, "wb") as dst:
        dst.write(src.read(16 << 20))
    repo = work / "repo-warm"
    shutil.rmtree(repo, ignore_errors=True)
    e = dict(env, VMKEEP_REPO=str(repo))
    out = work / "warm-restored.img"
    for cmd in (
        ["init"],
        ["backup", "image", str(small), "--name", "w"],
        ["backup", "image", str(small), "--name", "w"],
        ["restore", "image", "w@latest", "--to", str(out)],
    ):
        subprocess.run([*vmkeep, *cmd], env=e, check=True, capture_output=True)
    shutil.rmtree(repo, ignore_errors=True)
    small.unlink()
    out.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--size-gib", type=int, default=4)
    parser.add_argument("--tools", default="vmkeep,restic,borg")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--cold-restore",
        action="store_true",
        help="drop the page cache before each restore (root): the repository is read from disk",
    )
    parser.add_argument(
        "--dedupe",
        action="store_true",
        help="repository sizes: benchmark image, the same files in two separately built "
        "images, a dense image (--dedupe-mib each); no incrementals or restores",
    )
    parser.add_argument("--dedupe-mib", type=int, default=1024)
    parser.add_argument(
        "--as-checked-out",
        action="store_true",
        help="run vmkeep with the shell's environment as it is (with PYTHONDONTWRITEBYTECODE=1 "
        "every command compiles its imports: how vmkeep was measured before 2026-12-03)",
    )
    parser.add_argument(
        "--full-only",
        action="store_true",
        help="time only the full backups (no incrementals or restores): the speed goal's step",
    )
    args = parser.parse_args()
    global COLD
    COLD = args.cold_restore
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tools = args.tools.split(",")
    if args.dedupe:
        env = dict(
            os.environ,
            PREFECT_API_URL="",
            RESTIC_PASSWORD="bench",
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
            VMKEEP_STATE_DIR=str(work / "vmkeep-state"),
        )
        dedupe_runs(work, tools, args.dedupe_mib, env)
        return 0
    print("building the disk image …", flush=True)
    pristine = build_image(work, args.size_gib)
    image = work / "disk-work.img"
    size = pristine.stat().st_size
    env = dict(
        os.environ,
        PREFECT_API_URL="",
        RESTIC_PASSWORD="bench",
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        VMKEEP_STATE_DIR=str(work / "vmkeep-state"),  # a fresh installation: community tier
    )
    vmkeep = [sys.executable, "-m", "vmkeep.cli"]
    if any(t.startswith("vmkeep") for t in tools) and not args.as_checked_out:
        env = installed(env)
        warm_bytecode(work, pristine, vmkeep, env)
    runs: list[Run] = []
    for rnd, tool in ((r, t) for r in range(args.rounds) for t in tools):
        if args.rounds > 1 and tool == tools[0]:
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
        shutil.copyfile(pristine, image)
        subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        repo = work / f"repo-{tool}"
        shutil.rmtree(repo, ignore_errors=True)
        restored = work / "restored.img"
        restored.unlink(missing_ok=True)  # left by an earlier, interrupted run
        print(f"{tool}:", flush=True)
        if tool.startswith("vmkeep"):  # vmkeep's variants differ only in how init makes it
            e = dict(env, VMKEEP_REPO=str(repo))
            init_repo(tool, repo, e)
            runs.extend(
                run_step(
                    tool, "full", [*vmkeep, "backup", "image", str(image), "--name", "d"], size, e
                )
            )
            if args.full_only:
                continue
            extents = scatter_changes(image, 0.01, seed=5)
            (work / "changed.json").write_text(json.dumps(extents))
            runs.extend(
                run_step(
                    tool,
                    "incr (changed list)",
                    [
                        *vmkeep,
                        "backup",
                        "image",
                        str(image),
                        "--name",
                        "d",
                        "--changed-extents",
                        str(work / "changed.json"),
                    ],
                    size,
                    e,
                )
            )
            runs.extend(
                run_step(
                    tool,
                    "incr (scan)",
                    [*vmkeep, "backup", "image", str(image), "--name", "d"],
                    size,
                    e,
                )
            )
            runs.extend(
                run_step(
                    tool,
                    "restore",
                    [*vmkeep, "restore", "image", "d@latest", "--to", str(restored)],
                    size,
                    e,
                    durable=True,
                )
            )
            if not filecmp.cmp(image, restored, shallow=False):
                raise SystemExit(f"{tool}: the restored image differs from the source")
            print(f"  {tool}  restored image is bit-identical to the source", flush=True)
        elif tool == "restic":
            subprocess.run(
                ["restic", "-r", str(repo), "init"], env=env, check=True, capture_output=True
            )
            runs.extend(
                run_step(
                    tool, "full", ["restic", "-r", str(repo), "backup", "-q", str(image)], size, env
                )
            )
            if args.full_only:
                continue
            scatter_changes(image, 0.01, seed=5)
            runs.extend(
                run_step(
                    tool,
                    "incr (scan)",
                    ["restic", "-r", str(repo), "backup", "-q", str(image)],
                    size,
                    env,
                )
            )
            target = work / "restic-out"
            shutil.rmtree(target, ignore_errors=True)
            runs.extend(
                run_step(
                    tool,
                    "restore",
                    ["restic", "-r", str(repo), "restore", "latest", "--target", str(target)],
                    size,
                    env,
                    durable=True,
                )
            )
            shutil.rmtree(target, ignore_errors=True)
        elif tool == "borg":
            subprocess.run(
                ["borg", "init", "--encryption", "none", str(repo)],
                env=env,
                check=True,
                capture_output=True,
            )
            runs.extend(
                run_step(
                    tool,
                    "full",
                    ["borg", "create", "-C", "zstd,3", f"{repo}::a", str(image)],
                    size,
                    env,
                )
            )
            if args.full_only:
                continue
            scatter_changes(image, 0.01, seed=5)
            runs.extend(
                run_step(
                    tool,
                    "incr (scan)",
                    ["borg", "create", "-C", "zstd,3", f"{repo}::b", str(image)],
                    size,
                    env,
                )
            )
            target = work / "borg-out"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            runs.extend(
                run_step(
                    tool,
                    "restore",
                    ["bash", "-c", f"cd {target} && borg extract {repo}::b"],
                    size,
                    env,
                    durable=True,
                )
            )
            shutil.rmtree(target, ignore_errors=True)
        restored.unlink(missing_ok=True)
        shutil.rmtree(repo, ignore_errors=True)
    report(runs, size)
    return 0


def report(runs: list[Run], size: int) -> None:
    steps: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        steps.setdefault((r.tool, r.step), []).append(r)
    rounds = max(len(v) for v in steps.values())

    def med(key: tuple[str, str], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in steps[key])

    label = "median s" if rounds > 1 else "seconds"
    print(f"\n| tool | step | {label} | MB/s | CPU s | load | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for (tool, step), rs in steps.items():
        secs = med((tool, step), "seconds")
        rss = max(r.peak_rss_mb for r in rs)
        loads = "–".join(f"{x:.1f}" for x in sorted({round(r.load, 1) for r in rs}))
        print(
            f"| {tool} | {step} | {secs:.2f} | {size / secs / 1e6:.0f} | "
            f"{med((tool, step), 'cpu_s'):.1f} | {loads} | {rss:.0f} |"
        )

    def ratio(step_v: str, tool: str, step_o: str, attr: str = "seconds") -> str:
        v, o = ("vmkeep", step_v), (tool, step_o)
        if v not in steps or o not in steps:
            return "n/a"
        return f"{med(o, attr) / med(v, attr):.2f}×"

    print("\n| comparison | vmkeep speed-up (wall) | CPU-time ratio | target |\n|---|---|---|---|")
    for name, sv, tool, so, target in [
        ("full vs restic", "full", "restic", "full", "≥ 3×"),
        ("full vs borg", "full", "borg", "full", "≥ 2×"),
        ("incremental (scan) vs borg", "incr (scan)", "borg", "incr (scan)", "≥ 2×"),
        ("incremental (changed list) vs borg", "incr (changed list)", "borg", "incr (scan)", "—"),
        ("restore vs restic", "restore", "restic", "restore", "≥ 2×"),
        (
            "restore, data on disk (+ sync) vs restic",
            "restore + sync",
            "restic",
            "restore + sync",
            "≥ 2×",
        ),
        ("restore + sync vs borg", "restore + sync", "borg", "restore + sync", "—"),
    ]:
        print(f"| {name} | {ratio(sv, tool, so)} | {ratio(sv, tool, so, 'cpu_s')} | {target} |")
    print(
        f"\nimage size {size / (1 << 30):.1f} GiB; {os.cpu_count()} cores; {rounds} round(s);"
        f" restores {'from a cold page cache' if COLD else 'right after the backups (warm cache)'}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
