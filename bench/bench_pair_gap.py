"""Why the second of a same-files image pair still stores so much: its new bytes, by cause.

Builds ``bench_image.py``'s pair (two ext4 images from the same tree, a different random file
written first in each: 10 MiB + 123 KiB in ``a``, 37 MiB + 9 KiB in ``b``) and replays, without
writing a repository, what each piece chunking would store for ``a`` and then for ``b``
(unique pieces, zero pieces dropped, zstd-1 sizes, whole frames already known skipped):

* ``in-frame/N``: FastCDC (average N KiB) restarted at every 1 MiB frame edge (format 2 today);
* ``lookback/N/L``: the same pieces inside frames, but each frame's cut points come from running
  the chunker from ``L`` bytes *before* the frame edge (cuts before the edge dropped), so they
  are the stream's content-defined cuts again after the edge — same recipe format, one piece
  split at each edge instead of a truncated piece plus the pieces until the chain re-syncs;
* ``stream/N``: FastCDC over the whole image with no frames (borg/restic style): what any
  re-synchronisation of boundaries around frame edges could at best reach at that size.

``b``'s new bytes are split into (a) the bytes of ``b``'s own first file — unique to ``b`` by
construction (found with ``debugfs -R "blocks /0-first/extra.bin"``); (b) new pieces touching a
frame edge (the first or last piece of a frame); (c) the other new pieces (file data placed next
to other neighbours, ext4 metadata and directories that differ).  The goal "the second image
stores ≤ 25 % of the first" is printed for the whole image and for the shared part (without
``b``'s first file: all of it is new whatever the chunking).

    uv run --frozen python bench/bench_pair_gap.py --workdir bench-work --size-mib 256 \
        [--avg 16,64] [--lookback 65536,262144] [--sample 400]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import zstandard
from blake3 import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import build_pair

from vmkeep.storage.cdc import Chunker
from vmkeep.storage.cdc_frames import frame_cuts

FRAME = 1 << 20


def first_file_bytes(image: Path) -> set[int]:
    """The 1 KiB units (ext4 block size ≥ 1 KiB) that ``/0-first/extra.bin`` occupies."""

    def debugfs(request: str) -> str:
        return subprocess.run(
            ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
        ).stdout

    block = int(debugfs("stats").split("Block size:")[1].split()[0])
    per = block // 1024
    return {
        int(b) * per + k for b in debugfs("blocks /0-first/extra.bin").split() for k in range(per)
    }


class Store:
    """A simulated repository for one chunking: unique piece ids and what new ones cost."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: set[bytes] = set()
        self.keep = False
        self.comp = zstandard.ZstdCompressor(level=1)
        self.reset()

    def reset(self) -> None:
        self.z1 = self.raw = self.blobs = 0
        self.by_cause = {"first-file": 0, "frame-edge": 0, "other": 0}
        self.other: list[bytes] = []  # new "other" pieces (sampled later: are they in a?)

    def add(self, data: memoryview, cause: str) -> None:
        key = blake3(data).digest()
        if key in self.seen:
            return
        self.seen.add(key)
        self.blobs += 1
        self.raw += len(data)
        stored = min(len(self.comp.compress(data)), len(data))
        self.z1 += stored
        self.by_cause[cause] += stored
        if cause == "other" and self.keep:
            self.other.append(bytes(data))


def _cause(start: int, length: int, first: set[int], edge: bool) -> str:
    if any(b in first for b in range(start // 1024, (start + length - 1) // 1024 + 1)):
        return "first-file"
    return "frame-edge" if edge else "other"


def frames(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        offset = 0
        while data := f.read(FRAME):
            yield offset, data
            offset += len(data)


def replay(image: Path, stores: list[tuple[Store, object]], first: set[int]) -> float:
    started = time.monotonic()
    known_frames: set[bytes] = set()
    tail = b""
    for offset, data in frames(image):
        prev, tail = tail, data
        if not any(data):
            continue
        fid = blake3(data).digest()
        if fid in known_frames:
            continue
        known_frames.add(fid)
        view = memoryview(data)
        for store, how in stores:
            if how[0] == "stream":
                continue
            chunker, lookback = how[1], how[2]
            cuts = frame_cuts(chunker, view, prev[len(prev) - lookback :] if lookback else b"")
            for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(data)], strict=True)):
                piece = view[a:b]
                if not any(piece):
                    continue
                edge = i == 0 or b == len(data)
                store.add(piece, _cause(offset + a, b - a, first, edge))
    for store, how in stores:
        if how[0] != "stream":
            continue
        chunker = how[1]
        pos = 0
        with open(image, "rb") as f:
            for chunk in chunker.cut_stream(f):
                n = len(chunk)
                if any(chunk):
                    store.add(memoryview(chunk), _cause(pos, n, first, False))
                pos += n
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--avg", default="16,64")
    parser.add_argument("--lookback", default="65536,262144")
    parser.add_argument(
        "--sample",
        type=int,
        default=0,
        help="search this many of b's new 'other' pieces in a (slow: a scan of a per piece)",
    )
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    a, b = build_pair(work, args.size_mib)
    stores: list[tuple[Store, object]] = []
    for avg in (int(x) for x in args.avg.split(",")):
        sizes = (avg * 256, avg * 1024, avg * 4096)
        stores.append((Store(f"in-frame/{avg}K"), ("frame", Chunker(*sizes), 0)))
        for lb in (int(x) for x in args.lookback.split(",")):
            name = f"lookback/{avg}K/{lb >> 10}K"
            stores.append((Store(name), ("frame", Chunker(*sizes), lb)))
        stores.append((Store(f"stream/{avg}K"), ("stream", Chunker(*sizes))))
    print(f"load average {os.getloadavg()[0]:.2f} at start; pair {args.size_mib} MiB each")
    results: dict[str, dict[str, dict[str, int]]] = {}
    for image in (a, b):
        first = first_file_bytes(image)
        for store, _ in stores:
            store.reset()
            store.keep = image == b and args.sample > 0
        seconds = replay(image, stores, first)
        print(
            f"{image.name}: first file {len(first) / 1024:.1f} MiB; {seconds:.0f} s;"
            f" load {os.getloadavg()[0]:.2f}"
        )
        for store, _ in stores:
            results.setdefault(store.name, {})[image.name] = {
                "z1": store.z1,
                "blobs": store.blobs,
                **store.by_cause,
            }
    print(
        "\n| chunking | a stored MiB | b stored MiB | b/a | b's first file MiB |"
        " b frame-edge MiB | b other MiB | b/a without b's first file |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, per in results.items():
        ra, rb = per[a.name], per[b.name]
        shared = (rb["z1"] - rb["first-file"]) / ra["z1"]
        print(
            f"| {name} | {ra['z1'] / 2**20:.1f} | {rb['z1'] / 2**20:.1f} |"
            f" {rb['z1'] / ra['z1']:.0%} | {rb['first-file'] / 2**20:.1f} |"
            f" {rb['frame-edge'] / 2**20:.1f} | {rb['other'] / 2**20:.1f} | {shared:.0%} |"
        )
    # (c) the "other" new pieces of b: is their content anywhere in a (then chunking missed it)
    # or nowhere (data that really differs: ext4 metadata, directories, block-group seams)?
    if not args.sample:
        return 0
    a_bytes = a.read_bytes()
    print("\n| chunking | b other MiB | sampled | found in a (bytes share) |")
    print("|---|---|---|---|")
    for store, _ in stores:
        pieces = store.other
        step = max(1, len(pieces) // args.sample)
        sample = pieces[::step]
        found = sum(len(p) for p in sample if a_bytes.find(p) >= 0)
        total = sum(len(p) for p in sample) or 1
        print(
            f"| {store.name} | {store.by_cause['other'] / 2**20:.1f} | {len(sample)} |"
            f" {found / total:.0%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
