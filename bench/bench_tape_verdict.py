"""The tape streaming verdict over many runs: ``bench_tape.py`` again and again, summarised.

One ``bench_tape.py`` run gives a pairwise median over its rounds, but on a shared 2-core VM
whole runs differ by ±7 % from each other (docs/performance.md, "Tape, runs L–N"), more than
the margin the ≥ 0.90 goal is judged at.  This runs ``bench_tape.py`` ``--runs`` times, each a
fresh process with its own VTL, alternating the cartridges' place between the repository's
disk and ``--tape-dir`` (default ``/dev/shm``; ``--tape-dir ""``: always the disk), and prints
every run's cold ratios and, per place and overall, the median of the runs:

    uv run --frozen python bench/bench_tape_verdict.py [--runs 6] [--tape-dir /dev/shm] \\
        [-- any bench_tape.py options, e.g. --rounds 7 --mib 256]

Output: a table (markdown) and one JSON line with every run's numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("cold_ratio_stream_pairs_median", "cold_ratio_stream_pairs_median_to_raw_ram",
        "warm_ratio_stream_pairs_median", "cold_ratio_stream_pairs_median_to_pipe")


def one_run(tape_dir: str | None, extra: list[str]) -> dict[str, object]:
    cmd = [sys.executable, str(HERE / "bench_tape.py"), *extra]
    if tape_dir:
        cmd += ["--tape-dir", tape_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench_tape.py failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("{"))
    out: dict[str, object] = json.loads(line)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--tape-dir", default="/dev/shm",
                    help="the other place for cartridges, every other run ('' for none)")
    ap.add_argument("extra", nargs="*", help="options passed to bench_tape.py (after --)")
    a = ap.parse_args()
    runs: list[dict[str, object]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    for i in range(a.runs):
        place = a.tape_dir if a.tape_dir and i % 2 else None
        out = one_run(place, a.extra)
        out["place"] = "disk" if place is None else place
        runs.append(out)
        print(f"run {i + 1}/{a.runs} ({out['place']}, load {out['loadavg_start'][0]}): "  # type: ignore[index]
              + ", ".join(f"{k} {out[k]}" for k in KEYS), flush=True)
    options = " ".join(a.extra) or "(defaults)"
    print(f"\n{a.runs} runs from {started} UTC, bench_tape.py {options}\n")
    print("| cartridges | runs | cold pairwise medians | median of the runs | "
          "median to raw from RAM | warm median | cold to the raw pipe |")
    print("|---|---|---|---|---|---|---|")
    places = [*sorted({str(r["place"]) for r in runs}), "all"]
    summary: dict[str, dict[str, float]] = {}
    for place in places:
        sel = [r for r in runs if place == "all" or r["place"] == place]
        med = {k: round(statistics.median(float(r[k]) for r in sel), 3)  # type: ignore[arg-type]
               for k in KEYS}
        summary[place] = med
        cold = ", ".join(str(r[KEYS[0]]) for r in sel)
        print(f"| {place} | {len(sel)} | {cold} | **{med[KEYS[0]]}** | {med[KEYS[1]]} | "
              f"{med[KEYS[2]]} | {med[KEYS[3]]} |")
    print(json.dumps({"runs": runs, "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
