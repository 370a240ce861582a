"""Large objects written with O_DIRECT on local file systems: same bytes, same atomicity, same
typed errors as the buffered path, and a clean fallback where O_DIRECT is refused or unknown."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from vmkeep.storage.backends import direct_io
from vmkeep.storage.backends.local import LocalBackend
from vmkeep.storage.errors import TargetFull

needs_direct = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="O_DIRECT is Linux-only")


def _local_fs(path: Path) -> bool:
    return direct_io.fs_magic(str(path)) in direct_io.LOCAL_FS_MAGIC


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = direct_io.write_direct

    def spy(fd: int, parts: list[bytes], copied: Any = None) -> int:
        calls.append(fd)
        return real(fd, parts, copied)

    monkeypatch.setattr(direct_io, "write_direct", spy)
    return calls


def _parts(total: int) -> list[bytes | memoryview]:
    """Odd-sized parts (bytes and memoryviews) adding up to ``total`` bytes."""
    data = os.urandom(total)
    cuts = sorted({0, total, *range(0, total, 777_777), 4095, 4097, total - 3})
    cuts = [c for c in cuts if 0 <= c <= total]
    out: list[bytes | memoryview] = []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        out.append(data[a:b] if i % 2 else memoryview(data)[a:b])
    return out


@needs_direct
@pytest.mark.parametrize(
    "total", [direct_io.MIN_SIZE, direct_io.MIN_SIZE + 1, 5 * 1024 * 1024 + 4093, 8 << 20]
)
def test_large_objects_go_direct_and_read_back_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, total: int
) -> None:
    if not _local_fs(tmp_path):
        pytest.skip("the test directory is not on ext4/XFS/Btrfs")
    calls = _spy(monkeypatch)
    backend = LocalBackend(str(tmp_path))
    parts = _parts(total)
    order: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    backend.put_parts("packs/ab/big", parts, lambda: order.append("written"))
    assert calls, "a large object on a local file system is written with O_DIRECT"
    assert backend.get("packs/ab/big") == b"".join(bytes(p) for p in parts)
    assert order[:2] == ["written", "fsync"]
    assert [n for _, _, files in os.walk(tmp_path) for n in files] == ["big"]
    assert len(direct_io._pool) <= direct_io.POOL_KEEP


@needs_direct
def test_objects_of_different_sizes_reuse_one_aligned_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs differ in size by up to a blob: rounded up to a granule, one buffer serves them all
    (a fresh map costs a page fault per 4 KiB)."""
    if not _local_fs(tmp_path):
        pytest.skip("the test directory is not on ext4/XFS/Btrfs")
    monkeypatch.setattr(direct_io, "_pool", [])
    maps: list[int] = []
    real = direct_io.mmap.mmap

    def counting(fileno: int, length: int, **kw: Any) -> Any:
        maps.append(length)
        return real(fileno, length, **kw)

    monkeypatch.setattr(direct_io.mmap, "mmap", counting)
    backend = LocalBackend(str(tmp_path))
    base = direct_io.GRANULE - 512 * 1024
    for i, total in enumerate((base, base + 4097, base - 70_000, base + 300_000)):
        parts = _parts(total)
        backend.put_parts(f"packs/ab/p{i}", parts, lambda: None)
        assert backend.get(f"packs/ab/p{i}") == b"".join(bytes(p) for p in parts)
    assert maps == [direct_io.GRANULE]
    assert len(direct_io._pool) == 1


def test_small_objects_and_disabled_direct_io_stay_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy(monkeypatch)
    LocalBackend(str(tmp_path)).put("index/small", b"x" * (direct_io.MIN_SIZE - 1))
    monkeypatch.setenv("VMKEEP_DIRECT_IO", "0")
    backend = LocalBackend(str(tmp_path))
    backend.put("packs/aa/big", b"y" * (2 * direct_io.MIN_SIZE))
    assert not calls
    assert backend.get("packs/aa/big") == b"y" * (2 * direct_io.MIN_SIZE)


def test_unknown_file_systems_are_not_direct(tmp_path: Path) -> None:
    assert direct_io.fs_magic("/proc") not in direct_io.LOCAL_FS_MAGIC
    assert not direct_io.supported("/proc")
    assert direct_io.fs_magic(str(tmp_path / "does-not-exist")) is None


@needs_direct
def test_refused_o_direct_falls_back_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct_io, "supported", lambda path: True)
    real_open = os.open

    def refuse(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refuse)
    calls = _spy(monkeypatch)
    backend = LocalBackend(str(tmp_path))
    data = os.urandom(3 * direct_io.MIN_SIZE + 5)
    backend.put("packs/cd/one", data)
    backend.put("packs/cd/two", data)
    assert not calls and backend._direct is False
    assert backend.get("packs/cd/one") == backend.get("packs/cd/two") == data
    assert sorted(n for _, _, files in os.walk(tmp_path) for n in files) == ["one", "two"]


@needs_direct
def test_a_full_target_during_a_direct_write_is_typed_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _local_fs(tmp_path):
        pytest.skip("the test directory is not on ext4/XFS/Btrfs")
    backend = LocalBackend(str(tmp_path))
    backend.put("packs/ee/ok", b"k" * direct_io.MIN_SIZE)
    real_pwrite = os.pwrite
    state = {"n": 0}

    def fill_up(fd: int, data: memoryview, offset: int) -> int:
        state["n"] += 1
        if state["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data[: 1 << 20], offset)

    monkeypatch.setattr(os, "pwrite", fill_up)
    with pytest.raises(TargetFull):
        backend.put("packs/ee/full", os.urandom(4 * direct_io.MIN_SIZE))
    monkeypatch.undo()
    assert not backend.exists("packs/ee/full")
    assert [n for _, _, files in os.walk(tmp_path) for n in files] == ["ok"]
    assert backend.get("packs/ee/ok") == b"k" * direct_io.MIN_SIZE
