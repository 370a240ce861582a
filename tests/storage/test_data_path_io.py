"""The image data path's I/O helpers: gathered pack writes, sparse restores, write-back errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from blake3 import blake3

from tests.storage.storage_helpers import backup, sha
from vmkeep.storage import disk_restore
from vmkeep.storage.backends.faulty import FaultyBackend
from vmkeep.storage.backends.local import IOV_MAX, LocalBackend, write_all
from vmkeep.storage.codec import keep_freed_buffers
from vmkeep.storage.errors import TargetUnreachable
from vmkeep.storage.pack import PackBuilder, pack_digest, pack_key, parse_pack
from vmkeep.storage.repository import Repository


def _builder(n: int = 5) -> PackBuilder:
    builder = PackBuilder()
    for i in range(n):
        payload = bytes([i]) * (1000 + i)
        builder.add(bytes([i]) * 32, i % 2, payload if i % 2 else memoryview(payload), 1000 + i)
    return builder


def test_finish_parts_is_finish_without_the_copy() -> None:
    pack_id, data, entries = _builder().finish()
    parts_id, parts, parts_entries = _builder().finish_parts()
    assert parts_id == pack_id == blake3(data).digest()
    assert b"".join(parts) == data
    assert parts_entries == entries
    assert [(e.offset, e.stored_length) for e in parse_pack(data, "p")] == [
        (e.offset, e.stored_length) for e in entries
    ]
    for e in entries:
        assert data[e.offset : e.offset + e.stored_length] == bytes([e.blob_id[0]]) * e.raw_length


def test_write_all_resumes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [os.urandom(n) for n in (0, 1, 7, 4096, 3, 0, 100_000)] * 3
    real_writev = os.writev

    def dribble(fd: int, buffers: list[memoryview]) -> int:  # at most 5,000 bytes a call
        budget, out = 5000, []
        for b in buffers:
            out.append(b[:budget])
            budget -= len(out[-1])
            if not budget:
                break
        return real_writev(fd, out)

    monkeypatch.setattr(os, "writev", dribble)
    path = tmp_path / "out"
    with open(path, "wb") as f:
        assert write_all(f.fileno(), parts) == sum(map(len, parts))
    assert path.read_bytes() == b"".join(parts)


def test_write_all_more_parts_than_iov_max(tmp_path: Path) -> None:
    parts = [bytes([i % 251]) * 3 for i in range(IOV_MAX * 2 + 5)]
    path = tmp_path / "out"
    with open(path, "wb") as f:
        write_all(f.fileno(), parts)
    assert path.read_bytes() == b"".join(parts)


def test_put_parts_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(str(tmp_path))
    backend.put_parts("packs/aa/ok", [b"a" * 10, memoryview(b"b" * 20), b""])
    assert backend.get("packs/aa/ok") == b"a" * 10 + b"b" * 20

    def boom(fd: int, buffers: list[memoryview]) -> int:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(os, "writev", boom)
    with pytest.raises(TargetUnreachable):
        backend.put_parts("packs/aa/bad", [b"x" * 100, b"y" * 100])
    monkeypatch.undo()
    assert not backend.exists("packs/aa/bad")
    names = [n for _, _, files in os.walk(tmp_path) for n in files]
    assert names == ["ok"]


@pytest.mark.parametrize("wrapped", [False, True])
def test_packs_are_named_by_their_bytes(
    repo: Repository, image: Path, tmp_path: Path, wrapped: bool
) -> None:
    """Gathered writes (local) and joined writes (any other backend) store the same packs."""
    if wrapped:
        repo.backend = FaultyBackend(repo.backend)
    point, _ = backup(repo, image)
    packs = list(repo.backend.list("packs"))
    assert packs
    for key, _size in packs:
        data = repo.backend.get(key)
        assert pack_key(pack_digest(data)) == key  # version 2: the contents table's BLAKE3
        parse_pack(data, key)
    out = tmp_path / "out.img"
    disk_restore.restore_disk(repo, repo.load_point(point.id), 0, str(out))
    assert sha(out) == sha(image)


def test_restore_leaves_zero_chunks_as_holes(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "sparse.img"
    size = 64 * 64 * 1024
    with open(image, "wb") as f:
        f.truncate(size)
        f.seek(5 * 64 * 1024 + 17)
        f.write(b"data" * 1000)
    point, result = backup(repo, image)
    assert result.stats.chunks_zero == 63
    out = tmp_path / "out.img"
    disk_restore.restore_disk(repo, repo.load_point(point.id), 0, str(out))
    assert out.stat().st_size == size and sha(out) == sha(image)
    assert out.stat().st_blocks * 512 < size // 4  # holes, not written zeros


def test_background_writeback_error_fails_the_restore(
    repo: Repository, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of the flusher's fdatasync (reported once by the kernel) is not lost."""
    point, _ = backup(repo, image)
    monkeypatch.setattr(disk_restore, "FLUSH_EVERY", 64 * 1024)

    def eio(fd: int) -> None:
        raise OSError(5, "injected write-back error")

    monkeypatch.setattr(os, "fdatasync", eio)
    # the final fsync reports it too, so the outcome does not depend on whether the flusher
    # thread got to run before the end (it may not, on a loaded machine)
    monkeypatch.setattr(os, "fsync", eio)
    out = tmp_path / "out.img"
    with pytest.raises(OSError, match="write-back"):
        disk_restore.restore_disk(repo, repo.load_point(point.id), 0, str(out))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if ".vmkeep-" in p.name] == []


def test_keep_freed_buffers_is_idempotent() -> None:
    keep_freed_buffers()
    keep_freed_buffers()
    assert bytes(1 << 20) == bytes(1 << 20)
