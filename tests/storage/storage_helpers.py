"""Helpers shared by the storage tests: sample images, scribbling, hashing, backing up."""

from __future__ import annotations

import hashlib
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.repository import Repository


def write_image(path: Path, size: int = 3 * 1024 * 1024 + 12345, seed: int = 1) -> Path:
    """A disk-like image: random data, text, a zero region, and a partial last chunk."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size // 3))
        f.write(b"the quick brown fox " * (size // 3 // 20))
        f.truncate(size)
    return path


def scribble(path: Path, extents: list[tuple[int, int]], seed: int = 2) -> None:
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for off, length in extents:
            f.seek(off)
            f.write(rng.randbytes(length))


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def backup(repo: Repository, path: Path, name: str = "img", **kw):  # type: ignore[no-untyped-def]
    parent = repo.latest_point(name)
    with open(path, "rb") as f:
        result = backup_disk(
            repo, f, path.stat().st_size, parent=parent.chunks[0] if parent else None, **kw
        )
    return commit_point(repo, name, [result], parent=parent.id if parent else None), result


def restored_sha(repo: Repository, point_id: str, tmp_path: Path) -> str:
    out = tmp_path / f"restored-{point_id[:8]}.img"
    restore_disk(repo, repo.load_point(point_id), 0, str(out), overwrite=True)  # checked again
    return sha(out)




@contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"8m"``) mounted at ``mnt`` for the ``with`` block: a target that
    fills up (the test is skipped when it cannot be mounted)."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
