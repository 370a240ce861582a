"""What ``vmkeep verify yara`` costs: a YARA scan of every guest file of a restore point of the
benchmark image (``bench_image.py``'s ext4 image of this machine's system trees), in-process, with
a handful of string and hex rules; against YARA's own command line over the same files on the
host (``yara -r``, when installed), the floor for the matching itself.

    uv run --frozen python bench/bench_yara.py --workdir bench-work --size-gib 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import build_image

from vmkeep.browse.point import PointImage
from vmkeep.browse.yarascan import load_rules, scan_point
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.repository import Repository

RULES = """
rule eicar_like { strings: $a = "X5O!P%@AP[4\\\\PZX54(P^)7CC)7}$EICAR" condition: $a }
rule ransom_note { strings: $a = "YOUR FILES HAVE BEEN ENCRYPTED" nocase condition: $a }
rule mz_dropper { strings: $mz = { 4D 5A } $s = "This program cannot be run in DOS mode"
                  condition: $mz at 0 and $s }
rule cobalt_pipe { strings: $p = /\\\\\\\\\\.\\\\pipe\\\\MSSE-[0-9]{4}-server/ condition: $p }
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"))
    ap.add_argument("--size-gib", type=int, default=1)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    image = build_image(args.workdir, args.size_gib)
    root = args.workdir / "yara-repo"
    shutil.rmtree(root, ignore_errors=True)
    repo = Repository.init(str(root))
    with open(image, "rb") as f:
        point = commit_point(repo, "d", [backup_disk(repo, f, image.stat().st_size)])
    rules_file = args.workdir / "bench.yar"
    rules_file.write_text(RULES)
    rules = load_rules([str(rules_file)])
    started, cpu = time.monotonic(), time.process_time()
    with PointImage(repo, repo.load_point(point.id)) as img:
        result = scan_point(img, rules)
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    mb = sum(v.bytes for v in result.volumes) / 1e6
    print(f"load {os.getloadavg()[0]:.2f}; {result.files} files, {mb:.0f} MB, "
          f"{len(result.matches)} matches, {len(result.errors)} errors")
    print("| scan | wall s | CPU s | MB/s |")
    print("|---|---|---|---|")
    print(f"| vmkeep verify yara (in-process, from the repository) | {wall:.2f} | {cpu:.2f} | "
          f"{mb / wall:.0f} |")
    tree = args.workdir / "tree"
    if shutil.which("yara") and tree.is_dir():
        t0 = time.monotonic()
        subprocess.run(["yara", "-r", "-N", str(rules_file), str(tree)], capture_output=True)
        t = time.monotonic() - t0
        print(f"| yara -r over the source tree on the host (floor) | {t:.2f} | | {mb / t:.0f} |")
    shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
