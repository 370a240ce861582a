"""What ``vmkeep verify yara`` costs: a YARA scan of every guest file of a restore point of the
benchmark image (``bench_image.py``'s ext4 image of this machine's system trees), in-process, with
a handful of string and hex rules; against YARA's own command line over the same files on the
host (``yara -r``, when installed), the floor for the matching itself.  Then the same point
scanned twice more sharing one run's verdicts (:class:`vmkeep.browse.yarascan.Verdicts`): the
first fills them, the second stands for an older point whose files did not change (or another
VM's system files) — read, not matched again.  ``--extra-rules N`` adds N synthetic rules (a
string and a regular expression each), for a rule set of production size.

    uv run --frozen python bench/bench_yara.py --workdir bench-work [--extra-rules 2000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import build_image

from vmkeep.browse.point import PointImage
from vmkeep.browse.yarascan import Rules, ScanResult, Verdicts, load_rules, scan_point
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.repository import Repository

RULES = """
rule eicar_like { strings: $a = "X5O!P%@AP[4\\\\PZX54(P^)7CC)7}$EICAR" condition: $a }
rule ransom_note { strings: $a = "YOUR FILES HAVE BEEN ENCRYPTED" nocase condition: $a }
rule mz_dropper { strings: $mz = { 4D 5A } $s = "This program cannot be run in DOS mode"
                  condition: $mz at 0 and $s }
rule cobalt_pipe { strings: $p = /\\\\\\\\\\.\\\\pipe\\\\MSSE-[0-9]{4}-server/ condition: $p }
"""


def _synthetic(n: int) -> str:
    """``n`` rules of the kind large rule sets hold: a string and a regular expression each."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10))
        out.append(f'rule synthetic_{i} {{ strings: $s = "{word}" $r = /{word[:4]}[0-9]{{6}}/ '
                   "condition: $s or $r }")
    return "\n".join(out) + "\n"


def _timed(repo: Repository, point_id: str, rules: Rules,
           verdicts: Verdicts | None) -> tuple[ScanResult, float, float]:
    started, cpu = time.monotonic(), time.process_time()
    with PointImage(repo, repo.load_point(point_id)) as img:
        result = scan_point(img, rules, verdicts=verdicts)
    return result, time.monotonic() - started, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"))
    ap.add_argument("--size-gib", type=int, default=1)
    ap.add_argument("--extra-rules", type=int, default=0)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    image = build_image(args.workdir, args.size_gib)
    root = args.workdir / "yara-repo"
    shutil.rmtree(root, ignore_errors=True)
    repo = Repository.init(str(root))
    with open(image, "rb") as f:
        point = commit_point(repo, "d", [backup_disk(repo, f, image.stat().st_size)])
    rules_file = args.workdir / "bench.yar"
    rules_file.write_text(RULES + _synthetic(args.extra_rules))
    rules = load_rules([str(rules_file)])
    result, wall, cpu = _timed(repo, point.id, rules, None)
    mb = sum(v.bytes for v in result.volumes) / 1e6
    print(f"load {os.getloadavg()[0]:.2f}; {rules.count} rules; {result.files} files, "
          f"{mb:.0f} MB, {len(result.matches)} matches, {len(result.errors)} errors")
    print("| scan | wall s | CPU s | MB/s |")
    print("|---|---|---|---|")
    print(f"| vmkeep verify yara (in-process, from the repository) | {wall:.2f} | {cpu:.2f} | "
          f"{mb / wall:.0f} |")
    verdicts = Verdicts()
    for label in ("the same, filling one run's verdicts", "again with those verdicts"):
        again, wall, cpu = _timed(repo, point.id, rules, verdicts)
        assert again.matches == result.matches
        print(f"| {label} ({again.cached} files cached) | {wall:.2f} | {cpu:.2f} | "
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
