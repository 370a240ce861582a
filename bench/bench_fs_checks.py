"""Benchmark: what checking guest metadata by its checksums costs a walk that reads every file.

Usage::

    uv run python bench/bench_fs_checks.py [--files 20000] [--rounds 2] [--workdir DIR]

Builds an ext4 image (``mke2fs -d``, metadata_csum) and an XFS image (``mkfs.xfs -p``, CRCs) of
``--files`` small files in 20 directories, loads each into memory, then walks it and reads every
file through vmkeep's driver with the checks on and off (``checksums`` / ``_check_inode``
replaced by a no-op), alternating, ``--rounds`` times; prints the median seconds of each.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(work: Path, files: int) -> dict[str, bytes]:
    from tests.disks.disk_builders import mkfs_xfs

    tree = work / "tree"
    per = files // 20
    for d in range(20):
        (tree / f"d{d}").mkdir(parents=True)
        for i in range(per):
            (tree / f"d{d}" / f"file-{i:05d}.txt").write_text("x" * (i % 300))
    ext4 = work / "ext4.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(tree), str(ext4),
                    "512M"], check=True)
    xfs = work / "xfs.img"
    mkfs_xfs(tree, xfs, 512)
    return {"ext4": ext4.read_bytes(), "xfs": xfs.read_bytes()}


def walk(raw: bytes, checks: bool) -> float:
    from vmkeep.disks.fs import open_filesystem

    fs = open_filesystem(io.BytesIO(raw), "v")
    if not checks:
        fs.checksums = False  # ext
        fs._check_inode = lambda node: None  # type: ignore[method-assign]  # xfs (and ext)
        fs._check_blocks = lambda node, data: None  # type: ignore[attr-defined]
        fs._check_data_blocks = lambda node: None  # type: ignore[attr-defined]
    started = time.perf_counter()
    for _, _dirs, others in fs.walk("/"):
        for e in others:
            with fs.open(e.path) as f:
                f.read()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fs-checks-", dir=args.workdir) as tmp:
        images = build(Path(tmp), args.files)
    print(f"| file system | {args.files} files walked and read, checks off s | checks on s "
          "| cost |")
    print("| --- | ---: | ---: | ---: |")
    for name, raw in images.items():
        off, on = [], []
        for _ in range(args.rounds):
            off.append(walk(raw, False))
            on.append(walk(raw, True))
        a, b = statistics.median(off), statistics.median(on)
        print(f"| {name} | {a:.2f} | {b:.2f} | {100 * (b - a) / a:+.0f} % |", flush=True)


if __name__ == "__main__":
    main()
