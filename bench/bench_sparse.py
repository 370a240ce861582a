"""Benchmark: a sparse file (``/var/log/lastlog``-like) backed up and restored by vmkeep, restic and
borg in one run.

Usage::

    PREFECT_API_URL= uv run python bench/bench_sparse.py [--apparent-gib 64] [--workdir DIR]
        [--tools vmkeep,restic,borg]

Builds one file of ``--apparent-gib`` GiB that holds 8 MiB of seeded random data in 32 extents of
256 KiB spread over it (holes elsewhere), plus a small text file; then for each tool: first backup,
full restore.  Prints wall time, peak RSS (as ``bench_files.py``), and the restored file's
allocated bytes (``st_blocks``).  restic and borg run with their defaults, borg's restore with
``--sparse`` (its own option for writing holes); vmkeep needs no option.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_files import run, tools

EXTENTS, EXTENT = 32, 256 << 10


def _offsets(apparent: int) -> list[int]:
    step = apparent // EXTENTS
    return [i * step + (12345 * 4096) % step for i in range(EXTENTS)]


def _extents(path: Path, apparent: int) -> list[bytes]:
    """The bytes at the data extents (what a restore must give back; the rest reads as zero)."""
    with open(path, "rb") as f:
        return [os.pread(f.fileno(), EXTENT, off) for off in _offsets(apparent)]


def build(src: Path, apparent: int) -> None:
    src.mkdir(parents=True)
    rng = random.Random(7)
    with open(src / "lastlog", "wb") as f:
        f.truncate(apparent)
        for off in _offsets(apparent):
            f.seek(off)
            f.write(rng.randbytes(EXTENT))
    (src / "motd").write_text("welcome\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--apparent-gib", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--tools", default="vmkeep,restic,borg")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sparse-", dir=args.workdir))
    src = work / "src"
    build(src, args.apparent_gib << 30)
    st = os.stat(src / "lastlog")
    print(f"lastlog: {st.st_size / 2**30:.0f} GiB apparent, {st.st_blocks * 512 / 2**20:.1f} MiB "
          f"allocated; {os.cpu_count()} cores", flush=True)
    env = dict(os.environ, PREFECT_API_URL="", RESTIC_PASSWORD="bench",
               BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
               VMKEEP_STATE_DIR=str(work / "vmkeep-state"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    every = tools(work, src)
    brepo = work / "borg-repo"
    every["borg"]["restore"] = ["sh", "-c", f"borg extract --sparse "
                                f"{brepo}::$(borg list --last 1 --short {brepo})"]
    print("| tool | backup s | backup peak RSS MiB | restore s | restored file allocated MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for tool in [t for t in args.tools.split(",") if t in every]:
        c = every[tool]
        run(c["init"], env)
        backup = run(c["backup"], env)
        out = work / f"out-{tool}"
        out.mkdir()
        restore = run(c["restore"], env, cwd=out)
        restored = next(p for p in out.rglob("lastlog"))
        if restored.stat().st_size != st.st_size:
            raise SystemExit(f"{tool}: restored size differs")
        if _extents(restored, st.st_size) != _extents(src / "lastlog", st.st_size):
            raise SystemExit(f"{tool}: restored data differs")
        allocated = restored.stat().st_blocks * 512 / 2**20
        print(f"| {tool} | {backup[0]:.2f} | {backup[1]:.0f} | {restore[0]:.2f} | "
              f"{allocated:.1f} |", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
