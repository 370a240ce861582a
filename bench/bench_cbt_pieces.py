"""A CBT incremental in a version-1 (whole chunks) and a version-2 (pieces) repository, in-process.

Backs the image up in full, rewrites ~1 % of it in scattered extents (``bench_image.py``'s
``scatter_changes``), then backs it up again with exactly those extents as the change list, and
prints what the incremental read, stored, and cost (wall and process CPU).

    uv run --frozen python bench/bench_cbt_pieces.py bench-work/disk.img
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import scatter_changes

from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.repository import Repository

MIB = 2**20


def main() -> int:
    source = Path(sys.argv[1])
    work = source.parent
    runs = (
        ("version 1 (whole chunks)", {"image_cdc": None}),
        ("default (version 4, 64 KiB pieces in units)", {}),
    )
    for label, kw in runs:
        image = work / "cbt-work.img"
        shutil.copyfile(source, image)
        root = work / "cbt-repo"
        shutil.rmtree(root, ignore_errors=True)
        repo = Repository.init(str(root), **kw)  # type: ignore[arg-type]
        size = image.stat().st_size
        with open(image, "rb") as f:
            point = commit_point(repo, "d", [backup_disk(repo, f, size)])
        extents = [(off, n) for off, n in scatter_changes(image, 0.01, seed=5)]
        started, cpu = time.monotonic(), time.process_time()
        with open(image, "rb") as f:
            result = backup_disk(repo, f, size, parent=point.chunks[0], changed=extents)
        print(
            f"{label}: CBT incremental {time.monotonic() - started:.2f} s wall, "
            f"{time.process_time() - cpu:.2f} s CPU, read {result.stats.bytes_read / MIB:.0f} MiB,"
            f" stored {result.stats.bytes_stored / MIB:.1f} MiB, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        shutil.rmtree(root)
        image.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
