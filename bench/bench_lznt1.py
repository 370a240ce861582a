"""Reading files NTFS compressed itself (LZNT1: a folder marked compressed), as file restores,
mounts and scans read them (:func:`vmkeep.disks.fs.open_filesystem`): vmkeep's compressed stream
with libfwnt's C decoder (:mod:`vmkeep.disks.fs.ntfs_compression`) against dissect.ntfs's own
(its stream and dissect.util's pure-Python LZNT1).

The volume is made by ntfs-3g (``-o compression``, a folder with the compressed attribute):
``--mib`` MiB of this machine's executables and libraries (``/usr/bin``, ``/usr/lib``) and
``--mib`` / 2 MiB of log text.  Needs ``mkntfs``, ``ntfs-3g`` and FUSE (root).

    uv run --frozen python bench/bench_lznt1.py [--mib 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import dissect.ntfs.util
from dissect.ntfs.stream import CompressedRunlistStream

from vmkeep.disks.fs import ntfs_compression, open_filesystem


def executables(mib: int) -> bytes:
    out, want = bytearray(), mib << 20
    for root in ("/usr/bin", "/usr/lib/x86_64-linux-gnu"):
        for path in sorted(Path(root).iterdir()):
            if path.is_file() and not path.is_symlink() and len(out) < want:
                out += path.read_bytes()[: want - len(out)]
    return bytes(out)


def log_text(mib: int) -> bytes:
    rng = random.Random(1)
    lines = (b"2026-12-07 01:%02d:%02d web01 app[%d]: request %d served in %d ms\n"
             % (i // 60 % 60, i % 60, rng.randrange(1000), i, rng.randrange(500))
             for i in range(mib * 20_000))
    return b"".join(lines)[: mib << 20]


def build(work: Path, mib: int) -> tuple[Path, dict[str, bytes]]:
    files = {"bins.bin": executables(mib), "log.txt": log_text(max(1, mib // 2))}
    img, mnt = work / "ntfs.img", work / "mnt"
    with open(img, "wb") as f:
        f.truncate((3 * mib + 64) << 20)
    subprocess.run(["mkntfs", "-q", "-F", "-f", str(img)], check=True, capture_output=True)
    mnt.mkdir()
    subprocess.run(["ntfs-3g", "-o", "compression", str(img), str(mnt)], check=True)
    try:
        folder = mnt / "Compressed"
        folder.mkdir()
        os.setxattr(folder, "system.ntfs_attrib_be", (0x810).to_bytes(4, "big"))
        for name, data in files.items():
            (folder / name).write_bytes(data)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    return img, files


def read_all(img: Path, name: str) -> tuple[float, float, str]:
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "bench")
        wall, cpu = time.perf_counter(), time.process_time()
        digest = hashlib.sha256()
        with fs.open(f"/Compressed/{name}") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return time.perf_counter() - wall, time.process_time() - cpu, digest.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmkeep-bench-lznt1-") as tmp:
        img, files = build(Path(tmp), args.mib)
        rows = []
        for decoder, stream in (("vmkeep (libfwnt)", ntfs_compression.CompressedStream),
                                ("dissect.ntfs (Python)", CompressedRunlistStream)):
            dissect.ntfs.util.CompressedRunlistStream = stream
            for name, data in files.items():
                runs = [read_all(img, name) for _ in range(args.rounds)]
                assert all(d == hashlib.sha256(data).hexdigest() for _, _, d in runs), decoder
                wall = sorted(r[0] for r in runs)[len(runs) // 2]
                cpu = sorted(r[1] for r in runs)[len(runs) // 2]
                rows.append({"decoder": decoder, "file": name, "mib": round(len(data) / 2**20, 1),
                             "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                             "mib_per_s": round(len(data) / 2**20 / wall, 1)})
        ntfs_compression.install()
        for row in rows:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
