"""Coalesced span reads: a restore fetches chunks stored back to back with one get, within the
span limits, in order, with the same typed errors as chunk-by-chunk reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.storage.storage_helpers import backup, restored_sha, scribble, sha
from vmkeep.storage import spans
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.errors import BlobMissing, DataCorrupt
from vmkeep.storage.index import BlobLocation
from vmkeep.storage.repository import Repository


class CountingGets:
    """Wraps a repository's backend and records every ranged pack ``get``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pack_gets: list[tuple[str, int, int | None]] = []

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if key.startswith("packs/"):
            self.pack_gets.append((key, offset, length))
        return self.inner.get(key, offset, length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("cdc", [False, True], ids=["whole-frames", "recipes"])
def test_a_restore_reads_each_run_of_chunks_with_one_get(
    cdc: bool, image: Path, tmp_path: Path
) -> None:
    repo = Repository.init(
        str(tmp_path / "repo"), image_chunk_size=64 * 1024, **({} if cdc else {"image_cdc": None})
    )
    point, result = backup(repo, image)
    stored = result.stats.chunks_new + result.stats.pieces_new
    assert stored > 20  # 64 KiB chunks of a ~3 MiB image
    fresh = Repository.open(repo.backend.location)
    table = point.chunks[0]
    refs = [table.blob_id(i) for i in range(len(table)) if table.blob_id(i) != bytes(32)]
    recipes = spans.read_recipes(fresh, [r for r in refs if fresh.locate(r).codec == 2])
    assert bool(recipes) == cdc
    reads = [p for r in refs for p, _ in recipes.get(r, [(r, 0)]) if p != bytes(32)]
    counting = CountingGets(fresh.backend)
    fresh.backend = counting  # type: ignore[assignment]
    assert restored_sha(fresh, point.id, tmp_path) == sha(image)
    packs = {key for key, _, _ in counting.pack_gets}
    repeats = len(reads) - len(set(reads))  # a repeated chunk (deduplicated) reads backwards
    # whole frames: one get per run; recipes: one more get for each window's recipes
    assert len(counting.pack_gets) <= len(packs) + repeats + (1 if cdc else 0) < stored


def test_incremental_points_mixing_packs_restore_identically(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    first, _ = backup(repo, image)
    scribble(image, [(70_000, 5000), (1_500_000, 200_000), (3_000_000, 4096)])
    second, _ = backup(repo, image)
    assert restored_sha(repo, second.id, tmp_path) == sha(image)
    assert restored_sha(repo, first.id, tmp_path) != sha(image)


def _loc(pack: int, offset: int, stored: int, raw: int | None = None) -> BlobLocation:
    return BlobLocation(bytes([pack]) * 32, offset, stored, raw or stored, 1)


def _plan(locs: list[BlobLocation]) -> list[list[int]]:
    table = {bytes([i + 1]) * 32: loc for i, loc in enumerate(locs)}
    repo: Any = SimpleNamespace(index=table, locate=table.get)
    return [[tag for tag, _, _ in s.items] for s in spans.plan_spans(repo, enumerate(table))]


def test_spans_keep_order_and_respect_their_limits() -> None:
    mib = 1024 * 1024
    assert _plan([_loc(1, 8, 100), _loc(1, 108, 50), _loc(1, 158, 10)]) == [[0, 1, 2]]
    # another pack, a backwards offset, a gap beyond MAX_GAP: each starts a new span
    assert _plan([_loc(1, 8, 100), _loc(2, 108, 50), _loc(2, 8, 100)]) == [[0], [1], [2]]
    gap = spans.MAX_GAP
    assert _plan([_loc(1, 8, 100), _loc(1, 108 + gap, 1)]) == [[0, 1]]
    assert _plan([_loc(1, 8, 100), _loc(1, 109 + gap, 1)]) == [[0], [1]]
    # stored and decoded size limits
    big = [_loc(1, 8 + i * mib, mib) for i in range(20)]
    sizes = [len(s) for s in _plan(big)]
    assert sum(sizes) == 20 and max(sizes) == spans.MAX_SPAN_STORED // mib
    squeezed = [_loc(1, 8 + i * 1000, 1000, raw=4 * mib) for i in range(10)]
    assert [len(s) for s in _plan(squeezed)] == [4, 4, 2]


def test_unknown_blob_is_blob_missing_before_any_fetch() -> None:
    repo: Any = SimpleNamespace(index={}, locate={}.get)
    with pytest.raises(BlobMissing):
        list(spans.plan_spans(repo, [(0, b"\x01" * 32)]))


def test_a_truncated_pack_fails_the_restore_loudly(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    point, _ = backup(repo, image)
    key, size = max(repo.backend.list("packs"), key=lambda kv: kv[1])
    path = Path(repo.backend.location, *key.split("/"))
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    fresh = Repository.open(repo.backend.location)
    out = tmp_path / "out.img"
    with pytest.raises(DataCorrupt, match="truncated"):
        restore_disk(fresh, fresh.load_point(point.id), 0, str(out))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.img")]
