"""The image data path: full, scan and CBT modes, restore, and the random-access reader."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.storage.storage_helpers import backup, restored_sha, scribble, sha, write_image
from vmkeep.storage.disk_backup import chunks_touching
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import Repository


def test_full_scan_and_cbt_each_restore_bit_identically(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    p1, r1 = backup(repo, image)
    assert r1.info.mode == "full" and r1.stats.chunks_zero > 0
    h1 = sha(image)

    scribble(image, [(100, 10), (2_000_000, 5000)])
    p2, r2 = backup(repo, image)
    assert r2.info.mode == "scan"
    assert r2.stats.chunks_new == 2  # two 64 KiB chunks touched
    h2 = sha(image)

    changes = [(1_500_000, 100), (3_000_000, 70_000)]
    scribble(image, changes, seed=9)
    p3, r3 = backup(repo, image, changed=changes)
    assert r3.info.mode == "cbt"
    assert r3.stats.bytes_read <= 4 * 64 * 1024  # only the touched chunks were read
    h3 = sha(image)

    fresh = Repository.open(repo.backend.location)
    assert restored_sha(fresh, p1.id, tmp_path) == h1
    assert restored_sha(fresh, p2.id, tmp_path) == h2
    assert restored_sha(fresh, p3.id, tmp_path) == h3


def test_resized_disk_falls_back_to_scan(repo: Repository, image: Path, tmp_path: Path) -> None:
    backup(repo, image)
    with open(image, "ab") as f:
        f.write(b"grown" * 1000)
    p, r = backup(repo, image, changed=[(0, 10)])
    assert r.info.mode == "scan" and "size" in r.info.reason
    assert restored_sha(repo, p.id, tmp_path) == sha(image)


def test_allocated_extents_read_only_data(repo: Repository, tmp_path: Path) -> None:
    path = tmp_path / "thin.img"
    with open(path, "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(1024 * 1024)
        f.write(b"z" * 70_000)
    p, r = backup(repo, path, allocated=[(1024 * 1024, 70_000)])
    assert r.info.mode == "full" and r.stats.bytes_read == 2 * 64 * 1024
    assert restored_sha(repo, p.id, tmp_path) == sha(path)


def test_identical_disks_deduplicate(repo: Repository, image: Path, tmp_path: Path) -> None:
    backup(repo, image, name="a")
    copy = tmp_path / "copy.img"
    copy.write_bytes(image.read_bytes())
    _, r = backup(repo, copy, name="b")
    assert r.stats.chunks_new == 0 and r.stats.bytes_stored == 0


def test_missing_pack_is_healed_by_next_backup(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    p1, _ = backup(repo, image)
    for key, _ in list(repo.backend.list("packs")):
        repo.backend.delete(key)
    fresh = Repository.open(repo.backend.location)
    assert fresh.missing_packs == set() and len(fresh.index) == 0  # index loads lazily
    _, r = backup(fresh, image)
    assert r.stats.chunks_new > 0  # re-stored, not deduplicated against the lost pack
    assert restored_sha(Repository.open(repo.backend.location), p1.id, tmp_path) == sha(image)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2_000_000), st.integers(0, 300_000)), max_size=8))
def test_chunks_touching_covers_every_extent(extents: list[tuple[int, int]]) -> None:
    size, cs = 2_100_000, 65536
    ranges = list(chunks_touching(extents, size, cs))
    covered = {i for r in ranges for i in r}
    for a, b in itertools.pairwise(ranges):
        assert a.stop < b.start  # sorted, disjoint, merged
    for off, length in extents:
        if length and off < size:
            for i in range(off // cs, (min(size, off + length) - 1) // cs + 1):
                assert i in covered
    assert all(0 <= i < (size + cs - 1) // cs for i in covered)


@pytest.fixture(scope="module")
def reader_point(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repository, bytes, Any]:
    """One image point shared by the reader tests (module scope: Hypothesis runs each of them
    many times), in pytest's temporary folder (removed with the others)."""
    tmp = tmp_path_factory.mktemp("reader")
    repo = Repository.init(str(tmp / "repo"), image_chunk_size=64 * 1024)
    path = write_image(tmp / "d.img")
    point, _ = backup(repo, path)
    return repo, path.read_bytes(), repo.load_point(point.id)


class TestReader:
    @settings(max_examples=40, deadline=None)
    @given(offset=st.integers(0, 3_200_000), length=st.integers(0, 300_000))
    def test_ranges_match_the_image(
        self, reader_point: tuple[Repository, bytes, Any], offset: int, length: int
    ) -> None:
        repo, data, point = reader_point
        with PointReader(repo, point, 0) as reader:
            reader.seek(offset)
            assert reader.read(length) == data[offset : offset + length]

    def test_reads_only_needed_chunks(self, reader_point: tuple[Repository, bytes, Any]) -> None:
        repo, data, point = reader_point
        reader = PointReader(repo, point, 0)
        reader.seek(100_000)
        assert reader.read(10) == data[100_000:100_010]
        assert reader.cache.fetches == 1
        reader.seek(3_000_000)  # zero region: no fetch at all
        assert reader.read(1000) == bytes(1000)
        assert reader.cache.fetches == 1
