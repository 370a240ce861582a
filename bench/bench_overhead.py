"""Where a real repository's bytes go: one image backed up into a version-2 repository (64 KiB
pieces) and a version-1 one (whole frames); bytes per prefix, blobs by codec, trailer bytes.

    uv run --frozen python bench/bench_overhead.py bench-work/disk.img
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.index import decode_index
from vmkeep.storage.repository import Repository

MIB = 2**20


def measure(image: Path, root: Path, label: str, v1: bool) -> None:
    shutil.rmtree(root, ignore_errors=True)
    repo = Repository.init(str(root), **({"image_cdc": None} if v1 else {}))
    with open(image, "rb") as f:
        result = backup_disk(repo, f, image.stat().st_size)
    commit_point(repo, "d", [result])
    sizes: dict[str, int] = {}
    for path in root.rglob("*"):
        if path.is_file():
            top = path.relative_to(root).parts[0]
            sizes[top] = sizes.get(top, 0) + path.stat().st_size
    rows = pa.concat_tables(
        [decode_index(p.read_bytes(), str(p)) for p in root.glob("index/*.parquet")]
    )
    print(
        f"{label}: MiB by prefix: "
        + ", ".join(f"{k} {v / MIB:.2f}" for k, v in sorted(sizes.items()))
    )
    for codec, name in ((0, "raw"), (1, "zstd"), (2, "recipe")):
        t = rows.filter(pc.equal(rows["codec"], codec))
        stored = (pc.sum(t["stored_length"]).as_py() or 0) / MIB
        raw = (pc.sum(t["raw_length"]).as_py() or 0) / MIB
        print(f"  {name:6} blobs {t.num_rows:6}  stored {stored:8.2f} MiB  raw {raw:8.2f} MiB")
    print(
        f"  trailers {rows.num_rows * 50 / MIB:.2f} MiB; zero frames {result.stats.chunks_zero};"
        f" new frames {result.stats.chunks_new}; pieces {result.stats.pieces_new}"
    )
    shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    image = Path(sys.argv[1])
    root = image.parent / "overhead-repo"
    measure(image, root, "version 2 (64 KiB pieces)", v1=False)
    measure(image, root, "version 1 (whole frames)", v1=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
