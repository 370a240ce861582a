"""What each zstd level (and two alternatives) stores and costs on an image's new pieces.

Replays a version-3 repository's image chunking in-process (1 MiB frames, all-zero frames and
pieces skipped, frames and pieces deduplicated, each new frame cut into content-defined pieces
with the repository's default cut points and lookback) and compresses every new piece as
vmkeep does (kept when zstd saves >= 3 %, else raw), once per strategy:

* ``zstd-N``: each piece on its own at level N (what vmkeep stores today, at N = 1 or 3);
* ``zstd-N dict``: each piece with a dictionary trained on a sample of the image's pieces
  (would need a dictionary stored in the repository);
* ``zstd-N frame``: the new pieces of a frame compressed together (would need blobs that
  share one compressed unit);
* ``zstd-N probe``: as ``zstd-N``, but a piece whose first 4 KiB do not compress at level 1 is
  stored raw without compressing the rest (a cheaper incompressibility probe for pieces);
* ``unit PARAMS``: a frame's new pieces together (as ``zstd-N frame``, format version 4's
  compression units) with explicit zstd parameters (``--unit-params``, e.g.
  ``level=1,hash_log=16`` or ``level=3,hash_log=15,chain_log=14``: a level's parameters with
  some replaced), to look for settings between two levels.

For each: stored MiB (data only) and the CPU-seconds spent compressing (``thread_time``, one
thread), split into pieces that were kept compressed and those stored raw; and CPU-s per GiB
of new raw data.

    uv run --frozen python bench/bench_levels.py --workdir bench-work [--size-gib 1] \
        [--levels 1,2,3,4,5,6] [--image PATH] [--other-levels 1,3] [--no-dict] \
        [--unit-params "level=1;level=1,hash_log=16;level=3,hash_log=15"] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import zstandard
from blake3 import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import build_image

from vmkeep.storage.cdc import Chunker
from vmkeep.storage.cdc_frames import frame_cuts
from vmkeep.storage.codec import MIN_SAVING
from vmkeep.storage.config import default_image_cdc

FRAME = 1 << 20
PROBE = 4096


class Strategy:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stored = self.raw_in = self.kept_cpu = self.raw_cpu = 0.0
        self.kept = self.rawn = 0

    def account(self, raw_len: int, out_len: int, cpu: float) -> None:
        self.raw_in += raw_len
        if out_len <= raw_len * MIN_SAVING:
            self.stored += out_len
            self.kept_cpu += cpu
            self.kept += 1
        else:
            self.stored += raw_len
            self.raw_cpu += cpu
            self.rawn += 1


def new_pieces(image: Path) -> list[list[memoryview]]:
    """The new pieces of every new frame (a list per frame), as a version-3 backup cuts them."""
    cfg = default_image_cdc(FRAME)
    chunker = Chunker.from_config(cfg)
    lookback = cfg.get("lookback", 0)
    seen_frames: set[bytes] = set()
    seen: set[bytes] = set()
    out: list[list[memoryview]] = []
    with open(image, "rb") as f:
        offset = 0
        while True:
            data = f.read(FRAME)
            if not data:
                break
            if any(data):
                key = blake3(data).digest()
                if key not in seen_frames:
                    seen_frames.add(key)
                    lead = min(lookback, offset)
                    before = os.pread(f.fileno(), lead, offset - lead)
                    view = memoryview(data)
                    cuts = frame_cuts(chunker, view, before)
                    pieces = []
                    for s, e in zip([0, *cuts], [*cuts, len(data)], strict=True):
                        piece = view[s:e]
                        if not any(piece):
                            continue
                        pid = blake3(piece).digest()
                        if pid in seen:
                            continue
                        seen.add(pid)
                        pieces.append(piece)
                    if pieces:
                        out.append(pieces)
            offset += len(data)
    return out


def unit_compressor(spec: str) -> zstandard.ZstdCompressor:
    """``level=N[,name=value…]``: level N's parameters for a 1 MiB source with some replaced
    (names of :class:`zstandard.ZstdCompressionParameters`; ``strategy`` as a number)."""
    fields = dict(kv.split("=") for kv in spec.split(","))
    level = int(fields.pop("level", "1"))
    base = zstandard.ZstdCompressionParameters.from_level(level, source_size=FRAME)
    names = ("window_log", "hash_log", "chain_log", "search_log", "min_match",
             "target_length", "strategy")
    values = {name: getattr(base, name) for name in names}
    for name, value in fields.items():
        if name not in values:
            raise SystemExit(f"unknown zstd parameter {name!r} (one of {', '.join(names)})")
        values[name] = int(value)
    return zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters(**values))


def run_units(frames: list[list[memoryview]], specs: list[str], repeat: int) -> list[Strategy]:
    """Each spec over every frame's joined new pieces; with ``repeat`` > 1 the specs take
    turns ``repeat`` times and each keeps its least CPU (bytes are the same every time)."""
    joined = [b"".join(fr) for fr in frames]
    best: dict[str, Strategy] = {}
    for _ in range(repeat):
        for spec in specs:
            st = Strategy(f"unit {spec}")
            comp = unit_compressor(spec)
            for data in joined:
                t = time.thread_time()
                n = len(comp.compress(data))
                st.account(len(data), n, time.thread_time() - t)
            old = best.get(spec)
            if old is None or st.kept_cpu + st.raw_cpu < old.kept_cpu + old.raw_cpu:
                best[spec] = st
    return [best[spec] for spec in specs]


def run(frames: list[list[memoryview]], levels: list[int], dict_levels: list[int],
        unit_specs: list[str] | None = None, repeat: int = 1, dicts: bool = True) -> None:
    strategies: list[Strategy] = []
    total = sum(p.nbytes for fr in frames for p in fr)
    for level in levels:
        st = Strategy(f"zstd-{level}")
        comp = zstandard.ZstdCompressor(level=level)
        for fr in frames:
            for piece in fr:
                t = time.thread_time()
                n = len(comp.compress(piece))
                st.account(piece.nbytes, n, time.thread_time() - t)
        strategies.append(st)
        st = Strategy(f"zstd-{level} probe 4 KiB")
        probe = zstandard.ZstdCompressor(level=1)
        for fr in frames:
            for piece in fr:
                t = time.thread_time()
                head = piece[:PROBE]
                if piece.nbytes > 2 * PROBE and len(probe.compress(head)) > PROBE * MIN_SAVING:
                    n = piece.nbytes
                else:
                    n = len(comp.compress(piece))
                st.account(piece.nbytes, n, time.thread_time() - t)
        strategies.append(st)
    for level in dict_levels:
        st = Strategy(f"zstd-{level} frame")
        comp = zstandard.ZstdCompressor(level=level)
        for fr in frames:
            joined = b"".join(fr)
            t = time.thread_time()
            n = len(comp.compress(joined))
            st.account(len(joined), n, time.thread_time() - t)
        strategies.append(st)
    strategies += run_units(frames, unit_specs or [], repeat)
    rng = random.Random(7)
    flat = [p for fr in frames for p in fr]
    sample = [bytes(p) for p in rng.sample(flat, min(len(flat), 4000))]
    t = time.thread_time()
    dictionary = zstandard.train_dictionary(112 * 1024, sample) if dicts else None
    train = time.thread_time() - t
    for level in dict_levels if dicts else []:
        st = Strategy(f"zstd-{level} dict 112 KiB (train {train:.1f} CPU-s)")
        comp = zstandard.ZstdCompressor(level=level, dict_data=dictionary)
        for piece in flat:
            t = time.thread_time()
            n = len(comp.compress(piece))
            st.account(piece.nbytes, n, time.thread_time() - t)
        strategies.append(st)
    gib = total / 2**30
    print(f"\nnew pieces: {len(flat)}, {total / 2**20:.1f} MiB raw\n")
    print(
        "| strategy | stored MiB | vs the first row | CPU-s compressing | CPU-s per GiB new |"
        " CPU-s on pieces kept raw | pieces raw |"
    )
    print("|---|---|---|---|---|---|---|")
    base = strategies[0].stored
    for st in strategies:
        cpu = st.kept_cpu + st.raw_cpu
        print(
            f"| {st.name} | {st.stored / 2**20:.1f} | {st.stored / base - 1:+.1%} | {cpu:.2f} | "
            f"{cpu / gib:.2f} | {st.raw_cpu:.2f} | {st.rawn} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--levels", default="1,2,3,4,5,6")
    parser.add_argument("--other-levels", default="1,3", help="levels for frame / dict")
    parser.add_argument("--no-dict", action="store_true", help="skip the trained dictionaries")
    parser.add_argument("--unit-params", default="",
                        help="';'-separated unit parameter sets, e.g. "
                             "'level=1;level=1,hash_log=16'")
    parser.add_argument("--repeat", type=int, default=1,
                        help="unit parameter sets take turns N times; least CPU of each kept")
    args = parser.parse_args()
    image = args.image or build_image(args.workdir.resolve(), args.size_gib)
    mib = image.stat().st_size >> 20
    print(f"load average {os.getloadavg()[0]:.2f}; image {image} ({mib} MiB)")
    frames = new_pieces(image)
    run(
        frames,
        [int(x) for x in args.levels.split(",") if x],
        [int(x) for x in args.other_levels.split(",") if x],
        [x for x in args.unit_params.split(";") if x],
        args.repeat,
        not args.no_dict,
    )
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
