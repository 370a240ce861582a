"""CPU cost of the tape member digests: XXH3-128 against BLAKE3, in CPU-seconds per GB.

The tape copy job hashes every object it writes once, whole (``vmkeep.tape.pax``: a version-2 or
-3 pack gets ``xxhash.xxh3_128_hexdigest``, everything else ``blake3(...).hexdigest()``); packs
are up to 32 MiB.  This measures exactly those calls on one 32 MiB buffer of random bytes (the
speed of both does not depend on the content), in this one thread:

* ``xxh3_128``: ``xxhash.xxh3_128_hexdigest(buf)``
* ``blake3``: ``blake3(buf).hexdigest()`` (one thread, what the copy job does)
* ``blake3_mt``: ``blake3(buf, max_threads=blake3.AUTO).hexdigest()`` — for information only:
  its threads run on the same cores the drive's writer needs, so it saves wall time, not CPU

Each round hashes the buffer ``--passes`` times per algorithm (the algorithms alternate within a
round); CPU is ``time.process_time`` (user + system of the whole process, so ``blake3_mt``'s
threads count) and, for the single-threaded ones, ``time.thread_time`` as a cross-check.
GB = 10**9 bytes.  Output: one JSON object (medians over the rounds, every round's figure, the
load average before and after, library versions).

    uv run --frozen python bench/bench_digest.py [--rounds 7] [--passes 64] [--mib 32]

CPU-seconds are robust against other processes on the machine only as long as the cores are not
oversubscribed (frequency, caches and SMT siblings are shared): record the load with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import blake3
import xxhash


def _algorithms() -> dict[str, Callable[[bytes], str]]:
    return {
        "xxh3_128": xxhash.xxh3_128_hexdigest,
        "blake3": lambda buf: blake3.blake3(buf).hexdigest(),
        "blake3_mt": lambda buf: blake3.blake3(buf, max_threads=blake3.blake3.AUTO).hexdigest(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def measure(fn: Callable[[bytes], str], buf: bytes, passes: int) -> dict[str, float]:
    """CPU (process and thread) and wall seconds of ``passes`` calls of ``fn(buf)``."""
    cpu, thread, wall = time.process_time(), time.thread_time(), time.perf_counter()
    for _ in range(passes):
        fn(buf)
    return {
        "cpu_s": time.process_time() - cpu,
        "thread_s": time.thread_time() - thread,
        "wall_s": time.perf_counter() - wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--passes", type=int, default=64, help="hashes of the buffer per round")
    parser.add_argument("--mib", type=int, default=32, help="buffer size in MiB")
    args = parser.parse_args()
    buf = os.urandom(args.mib << 20)
    algorithms = _algorithms()
    load_before = os.getloadavg()
    for fn in algorithms.values():  # warm-up: code, the buffer's pages, blake3's thread pool
        fn(buf)
    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in algorithms}
    for rnd in range(args.rounds):
        order = list(algorithms) if rnd % 2 == 0 else list(reversed(algorithms))
        for name in order:
            per_round[name].append(measure(algorithms[name], buf, args.passes))
    gb = args.passes * len(buf) / 1e9
    result: dict[str, object] = {
        "buffer_mib": args.mib,
        "passes_per_round": args.passes,
        "rounds": args.rounds,
        "gb_per_round": round(gb, 3),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "xxhash_version": xxhash.VERSION,
        "blake3_version": blake3.__version__,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    medians: dict[str, float] = {}
    for name, rows in per_round.items():
        cpu_per_gb = [r["cpu_s"] / gb for r in rows]
        medians[name] = statistics.median(cpu_per_gb)
        result[name] = {
            "cpu_s_per_gb": round(medians[name], 4),
            "cpu_s_per_gb_rounds": [round(x, 4) for x in cpu_per_gb],
            "thread_s_per_gb": round(statistics.median(r["thread_s"] / gb for r in rows), 4),
            "wall_s_per_gb": round(statistics.median(r["wall_s"] / gb for r in rows), 4),
        }
    xxh3, b3 = medians["xxh3_128"], medians["blake3"]
    result["blake3_over_xxh3_cpu"] = round(b3 / xxh3, 2) if xxh3 else None
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
