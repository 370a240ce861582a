"""Off-site copy benchmark: ``vmkeep copy`` against ``restic copy`` on the same image, in one run.

Each tool backs up ``bench_image.py``'s benchmark image into a source repository, copies it into
a second repository (full copy), then — after ~1 % scattered changes and a second backup —
copies again (incremental copy).  Only the copies are timed; both destinations are then checked
(``vmkeep check --read-data`` / ``restic check --read-data``, untimed) and vmkeep's last copy is
restored and compared with the image byte for byte.

    uv run --frozen python bench/bench_copy.py [--workdir bench-work] [--size-gib 1]

Fairness: restic's repositories are encrypted (always), and ``restic copy`` re-encrypts every
blob it copies (restic ≥ 0.14 needs no chunker parameters in common here: it copies blobs, it
does not re-chunk); vmkeep's are plain and its copy is logical (read, hash, compress and store
each changed chunk again, under the destination's keys).  Wall and CPU seconds (user + system,
``/usr/bin/time``) and the load at the start of each step are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import Run, build_image, installed, run_step, scatter_changes

VMKEEP = [sys.executable, "-m", "vmkeep.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="bench-work")
    parser.add_argument("--size-gib", type=int, default=1)
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pristine = build_image(work, args.size_gib)
    image = work / "copy-disk.img"
    env = installed(dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_FROM_PASSWORD="bench",
                         PREFECT_API_URL="",
                         # a fresh installation's licence state, not this machine's
                         VMKEEP_STATE_DIR=str(work / "vmkeep-state")))
    size = pristine.stat().st_size
    runs: list[Run] = []
    for tool in ("vmkeep", "restic"):
        shutil.copyfile(pristine, image)
        src, dst = work / f"copy-{tool}-src", work / f"copy-{tool}-dst"
        for repo in (src, dst):
            shutil.rmtree(repo, ignore_errors=True)
            init = ([*VMKEEP, "init", "--repo", str(repo)] if tool == "vmkeep"
                    else ["restic", "-r", str(repo), "init"])
            subprocess.run(init, env=env, check=True, capture_output=True)
        backup = ([*VMKEEP, "backup", "image", str(image), "--name", "disk", "--repo", str(src)]
                  if tool == "vmkeep" else ["restic", "-r", str(src), "backup", "-q", str(image)])
        copy = ([*VMKEEP, "copy", "--repo", str(dst), "--from-repo", str(src)]
                if tool == "vmkeep"
                else ["restic", "-r", str(dst), "copy", "--from-repo", str(src)])
        subprocess.run(backup, env=env, check=True, capture_output=True)
        runs += run_step(tool, "full copy", copy, size, env)
        scatter_changes(image, 0.01, seed=7)
        subprocess.run(backup, env=env, check=True, capture_output=True)
        runs += run_step(tool, "incremental copy", copy, size, env)
        check = ([*VMKEEP, "check", "--read-data", "--repo", str(dst)] if tool == "vmkeep"
                 else ["restic", "-r", str(dst), "check", "--read-data"])
        subprocess.run(check, env=env, check=True, capture_output=True)
        if tool == "vmkeep":
            out = work / "copy-restored.img"
            subprocess.run([*VMKEEP, "restore", "image", "disk@latest", "--to", str(out),
                            "--overwrite", "--repo", str(dst)], env=env, check=True,
                           capture_output=True)
            assert filecmp.cmp(out, image, shallow=False), "the copy does not restore the image"
            out.unlink()
    print("\n| tool | step | wall s | CPU s | load |\n|---|---|---|---|---|")
    for r in runs:
        print(f"| {r.tool} | {r.step} | {r.seconds:.2f} | {r.cpu_s:.2f} | {r.load:.2f} |")
    by = {(r.tool, r.step): r for r in runs}
    for step in ("full copy", "incremental copy"):
        mine, theirs = by[("vmkeep", step)], by[("restic", step)]
        print(f"{step}: vmkeep {theirs.seconds / mine.seconds:.2f}x restic's speed (wall), "
              f"{theirs.cpu_s / mine.cpu_s:.2f}x by CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
