"""What the deleted-blocks tests share: search a disk image file for deleted blocks; back it up
with ``--exclude-deleted`` into a fresh repository (256 KiB chunks) and restore it, as a user
would, through the CLI; place a volume on a disk, fill its free space with noise, and check that
a restore differs from its source only by zeros in free space."""

from __future__ import annotations

import bisect
import json
import os
import random
from pathlib import Path
from typing import Any

from tests.restore.restore_helpers import run_cli
from vmkeep.disks.deleted_blocks import DeletedScan, find_deleted
from vmkeep.storage.repository import Repository

CHUNK = 256 * 1024
MiB = 1 << 20


def scan_file(path: Path, min_bytes: int = MiB) -> DeletedScan:
    """:func:`find_deleted` over the disk image file ``path``, areas of ``min_bytes`` at least."""
    with open(path, "rb") as fh:
        return find_deleted(lambda o, n: os.pread(fh.fileno(), n, o), path.stat().st_size,
                            min_bytes)


def backed_up_and_restored(
    disk: Path, name: str, tmp_path: Path, part: int, size: int
) -> tuple[dict[str, Any], Any, Path, Path]:
    """``(backup summary, restore point, restored disk, its volume at part/size)``."""
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=CHUNK)
    code, out, err = run_cli("backup", "image", str(disk), "--name", name, "--exclude-deleted",
                             "--json", repo=repo)
    assert code == 0, err
    point = Repository.open(str(repo)).latest_point(name)
    assert point is not None
    restored = tmp_path / "restored.img"
    code, _out, err = run_cli("restore", "image", point.id, "--to", str(restored), repo=repo)
    assert code == 0, err
    volume = tmp_path / "volume.img"
    with open(restored, "rb") as src, open(volume, "wb") as dst:
        src.seek(part)
        dst.write(src.read(size))
    return json.loads(out), point, restored, volume


def on_mbr_disk(tmp: Path, volume: Path, part: int = MiB) -> Path:
    """``volume`` as the one partition (at ``part``) of an MBR disk ``tmp/disk.img``."""
    from tests.disks import disk_builders as b

    disk = b.new_disk(tmp / "disk.img", part + volume.stat().st_size + MiB)
    b.write_mbr(disk, [(0x83, part // 512, volume.stat().st_size // 512)])
    b.place(disk, part, volume)
    return disk


def fill_with_noise(volume: Path, free: list[tuple[int, int]], seed: int) -> int:
    """Random bytes written into every ``free`` range (deleted data left behind); how many."""
    rng = random.Random(seed)
    written = 0
    with open(volume, "r+b") as f:
        for offset, length in free:
            f.seek(offset)
            f.write(rng.randbytes(length))
            written += length
    return written


def zeroed_where_free(source: bytes, restored: bytes, free: list[tuple[int, int]]) -> int:
    """Bytes of ``restored`` that differ from ``source``, by whole chunks — each such chunk
    zeros and inside one ``free`` range (asserted)."""
    starts = [o for o, _n in free]
    differing = 0
    for at in range(0, len(source), CHUNK):
        if source[at:at + CHUNK] == restored[at:at + CHUNK]:
            continue
        assert restored[at:at + CHUNK] == bytes(CHUNK), at  # left out: zeros …
        i = bisect.bisect_right(starts, at) - 1
        assert i >= 0 and at + CHUNK <= free[i][0] + free[i][1], at  # … and only free space
        differing += CHUNK
    return differing


def flip_byte(path: Path, at: int) -> None:
    """One bit of the byte at ``at`` flipped (damage a checksum must catch)."""
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))
