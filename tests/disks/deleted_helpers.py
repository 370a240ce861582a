"""What the deleted-blocks tests share: search a disk image file for deleted blocks; back it up
with ``--exclude-deleted`` into a fresh repository (256 KiB chunks) and restore it, as a user
would, through the CLI."""

from __future__ import annotations

import json
import os
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
