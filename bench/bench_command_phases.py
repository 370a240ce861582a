"""Where a whole ``vmkeep backup image`` command spends its wall time besides the backup.

Each round runs ``vmkeep backup image IMAGE --json`` as a fresh process (this venv's Python,
no Prefect API: direct mode) into a fresh repository, after reading the image once (page cache
warm, as in ``bench_image.py``), and splits its wall time by two marks:

* **before the job**: from the start of the process to the job's start — the process's wall
  time up to the first byte of its summary, minus the job's own ``duration_s`` (imports, the
  CLI, building the spec);
* **the job**: ``duration_s`` of the summary (repository open to restore point committed);
* **after the summary**: from the summary's first byte to the process's end (exit hooks and,
  unless the CLI skips it, the interpreter's teardown: ``vmkeep/cli/fast_exit.py``).

Medians over ``--rounds``; the 1-minute load average is printed with them (wall times on the
shared 2-core machine move with it).

    uv run --frozen python bench/bench_command_phases.py IMAGE [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_round(image: Path, work: Path) -> tuple[float, float, float]:
    """(before the job, the job, after the summary) in seconds, of one backup command."""
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(repo),
               VMKEEP_STATE_DIR=str(work / "state"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached
    cli = [sys.executable, "-m", "vmkeep.cli"]
    subprocess.run([*cli, "init"], env=env, check=True, capture_output=True)
    subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)
    started = time.monotonic()
    proc = subprocess.Popen([*cli, "backup", "image", str(image), "--name", "d", "--json"],
                            env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    summary_at = time.monotonic()
    rest = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"backup failed with exit code {proc.returncode}")
    ended = time.monotonic()
    job = float(json.loads(first + rest)["duration_s"])
    return summary_at - started - job, job, ended - summary_at


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmkeep-bench-phases-"))
    try:
        one_round(a.image, work)  # warm-up: bytecode written, caches filled
        rows = [one_round(a.image, work) for _ in range(a.rounds)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    for i, (before, job, after) in enumerate(rows, 1):
        print(f"round {i}: before the job {before:.3f} s, job {job:.3f} s, "
              f"after the summary {after:.3f} s")
    med = [statistics.median(r[k] for r in rows) for k in range(3)]
    print(f"medians of {a.rounds}: before the job {med[0]:.3f} s, job {med[1]:.3f} s, "
          f"after the summary {med[2]:.3f} s (load {load:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
