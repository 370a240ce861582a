"""Prune's memory stays in Arrow arrays, not Python objects (a regression guard, not a timing
test): manifests are never decoded into Python lists, and the Python heap's peak during a prune
of a synthetic repository does not grow with the number of blobs."""

from __future__ import annotations

import os
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vmkeep.storage import manifest
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.index import encode_index
from vmkeep.storage.manifest import ChunkTable, DiskInfo, RestorePoint
from vmkeep.storage.pack import PackBuilder, PackEntry, pack_key
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository


def synthetic(path: Path, points: int, per_point: int, window: int) -> Repository:
    """``points`` image points; each stores ``per_point`` new tiny blobs (one pack, one index)
    and references the last ``window`` blobs (as bench/bench_prune.py builds, smaller)."""
    repo = Repository.init(str(path), image_chunk_size=64 * 1024)
    ids: list[bytes] = []
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for p in range(points):
        builder = PackBuilder()
        for _ in range(per_point):
            blob_id = os.urandom(32)
            builder.add(blob_id, 0, blob_id[:16], 16)
            ids.append(blob_id)
        pack_id, data, entries = builder.finish()
        repo.backend.put(pack_key(pack_id), data)
        written: list[tuple[bytes, PackEntry]] = [(pack_id, e) for e in entries]
        key, data = encode_index(written)
        repo.backend.put(key, data)
        table = ChunkTable()
        for n, blob_id in enumerate(ids[-window:]):
            table.append(n * 16, 16, blob_id, bytes(16))
        disk = DiskInfo(0, "disk0", len(table) * 16, 16)
        repo.save_point(RestorePoint("s", "image", t0 + timedelta(hours=p), [disk], {0: table}))
    return repo


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    repo = synthetic(tmp_path_factory.mktemp("prune-memory") / "repo", 12, 10_000, 30_000)
    points = repo.list_points()
    forget_ids(repo, [p.id for p in points[:4]])  # the first packs become garbage
    return repo


def test_prune_never_decodes_manifests_into_python_objects(
    big: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("prune must read manifests column-wise, not through decode_point")

    from vmkeep.storage import prune as prune_module

    monkeypatch.setattr(manifest, "decode_point", refuse)
    monkeypatch.setattr(prune_module, "decode_point", refuse, raising=False)  # a direct import
    report = prune(big, grace=timedelta(0), dry_run=True)
    assert report.points == 8 and report.referenced_blobs == 30_000 + 7 * 10_000
    assert report.indexed_blobs == 120_000 and report.missing_blobs == 0


def test_python_heap_peak_does_not_grow_with_the_blobs(
    big: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What prune holds in Python objects is one stored object's bytes at a time (a manifest, an
    index file), whatever the number of blobs: bound the heap's peak by 4x the largest object
    (~4 MiB here; measured ~2.4 MiB).  The earlier implementation peaked at ~14 MiB on this
    repository (manifest offsets as Python lists, a set of every kept id)."""
    from vmkeep.storage import prune as prune_module

    monkeypatch.setattr(prune_module, "INDEX_ROWS", 20_000)  # written index files stay small
    largest = max(size for prefix in ("manifests", "index") for _, size in big.backend.list(prefix))
    tracemalloc.start()
    try:
        report = prune(big, grace=timedelta(0), repack_below=0.9)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.packs_deleted > 0 and report.indexes_written > 1  # the whole sweep ran
    assert peak < 4 * largest, (peak, largest)
