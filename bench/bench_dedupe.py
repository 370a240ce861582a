"""Where the bytes of an image repository go: a breakdown by cause, computed in-process.

For a disk image (or several, backed up one after another into one repository) this replays
vmkeep's image chunking without writing anything and reports, per image:

* ``zero frames``: all-zero 1 MiB frames (stored as nothing);
* ``fixed``: the unique non-zero 1 MiB frames — what fixed chunking stores — compressed with
  zstd-1 and zstd-3 (the compression-level share);
* ``cdc/N``: each non-zero, not-yet-known frame cut again by FastCDC (average ``N`` KiB) inside
  the frame, zero pieces dropped, unique pieces compressed (the duplicates fixed chunks miss);
* ``stream/N``: content-defined chunks over the whole image with no frame (borg/restic style),
  for reference;
* overhead: pack trailer (50 bytes) + index row (≈ 45 bytes) per stored blob, recipes
  (36 bytes per piece + 4) — compared with the compressed data.

Images given later are deduplicated against everything before them (the cross-image case: the
second of two separately built images with the same files).  ``--pair`` builds such a pair:
two ext4 images made with ``mke2fs -d`` from the same system tree, each with a different file
(different size) written first, so the same files sit at different offsets.

    uv run --frozen python bench/bench_dedupe.py --workdir bench-work [--size-mib 1024] \
        [--pair] [--image PATH ...] [--avg 16,64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import zstandard
from blake3 import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import build_dense, build_image, build_pair

from vmkeep.storage.cdc import Chunker

FRAME = 1 << 20
PER_BLOB = 50 + 45  # pack trailer entry + index row (measured: ≈ 45 bytes/row in Parquet)
PER_PIECE = 36


def frames(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as f:
        while True:
            data = f.read(FRAME)
            if not data:
                return
            yield data


class Store:
    """One simulated repository for one chunking: unique ids and their stored sizes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: set[bytes] = set()
        self.z1 = self.z3 = self.raw = self.blobs = self.pieces = 0

    def add(
        self,
        data: bytes | memoryview,
        c1: zstandard.ZstdCompressor,
        c3: zstandard.ZstdCompressor | None,
    ) -> None:
        key = blake3(data).digest()
        if key in self.seen:
            return
        self.seen.add(key)
        self.blobs += 1
        self.raw += len(data)
        self.z1 += min(len(c1.compress(data)), len(data))
        if c3 is not None:
            self.z3 += min(len(c3.compress(data)), len(data))

    def snapshot(self) -> tuple[int, int, int, int, int]:
        return self.raw, self.z1, self.z3, self.blobs, self.pieces


def analyse(images: list[Path], avgs: list[int], level3: bool) -> None:
    c1 = zstandard.ZstdCompressor(level=1)
    c3 = zstandard.ZstdCompressor(level=3) if level3 else None
    fixed = Store("fixed 1 MiB")
    cdcs = [
        (avg, Chunker(avg * 256, avg * 1024, avg * 4096), Store(f"cdc-in-frame/{avg}K"))
        for avg in avgs
    ]
    stream_chunker = Chunker(512 * 1024, 2048 * 1024, 8192 * 1024)  # borg's 2 MiB average
    stream = Store("stream cdc/2048K (borg-like)")
    rows = []
    for image in images:
        before = {s.name: s.snapshot() for s in [fixed, stream, *(c[2] for c in cdcs)]}
        zero_frames = nframes = 0
        started = time.monotonic()
        for data in frames(image):
            nframes += 1
            if not any(data) and data == bytes(len(data)):
                zero_frames += 1
                continue
            known = blake3(data).digest() in fixed.seen
            fixed.add(data, c1, c3)
            if known:
                continue
            for _avg, chunker, store in cdcs:
                for piece in chunker.cut(data):
                    store.pieces += 1
                    if piece.nbytes and not any(piece):
                        continue
                    store.add(piece, c1, c3)
        with open(image, "rb") as f:
            for piece in stream_chunker.cut_stream(f):
                stream.pieces += 1
                if not any(piece):
                    continue
                stream.add(piece, c1, c3)
        elapsed = time.monotonic() - started
        size = image.stat().st_size
        print(
            f"\n### {image.name}: {size >> 20} MiB, {nframes} frames, {zero_frames} all-zero"
            f" ({elapsed:.0f} s)\n"
        )
        print(
            "| chunking | new raw MiB | zstd-1 MiB | zstd-3 MiB | new blobs | pieces |"
            " overhead MiB (z1) |"
        )
        print("|---|---|---|---|---|---|---|")
        for s in [fixed, *(c[2] for c in cdcs), stream]:
            b = before[s.name]
            raw, z1, z3, blobs, pieces = (x - y for x, y in zip(s.snapshot(), b, strict=True))
            over = blobs * PER_BLOB + (pieces * PER_PIECE if s.name.startswith("cdc-in") else 0)
            print(
                f"| {s.name} | {raw / 2**20:.1f} | {z1 / 2**20:.1f} | "
                f"{z3 / 2**20:.1f} | {blobs} | {pieces} | {over / 2**20:.2f} |"
            )
        rows.append(image.name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--bench-image", action="store_true", help="bench_image.py's image")
    parser.add_argument("--pair", action="store_true")
    parser.add_argument("--dense", action="store_true", help="bench_image.py's dense image")
    parser.add_argument("--image", type=Path, action="append", default=[])
    parser.add_argument("--avg", default="16,64")
    parser.add_argument("--no-level3", action="store_true")
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    images = list(args.image)
    if args.bench_image:
        images.append(build_image(work, max(1, args.size_mib >> 10)))
    if args.pair:
        images.extend(build_pair(work, args.size_mib))
    if args.dense:
        images.append(build_dense(work, args.size_mib))
    print(f"load average {os.getloadavg()[0]:.2f}; images: {', '.join(i.name for i in images)}")
    analyse(images, [int(a) for a in args.avg.split(",")], not args.no_level3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
