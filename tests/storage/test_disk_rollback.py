"""Quick rollback's data path (:mod:`vmkeep.storage.disk_rollback`) on real files: only the given
areas are looked at, only differing slices are written, areas cross chunk boundaries and overlap,
a short (thin) file reads as zeros past its end, a second run finds nothing to do, one thread or
several give the same file, and a failing chunk stops every writer before the error returns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hypothesis_profile import SUPPRESSED
from tests.storage.storage_helpers import backup, scribble, write_image
from vmkeep.storage.disk_rollback import roll_back
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import Repository

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repository, bytes, Any]:
    tmp = tmp_path_factory.mktemp("rollback")
    repo = Repository.init(str(tmp / "repo"), image_chunk_size=CHUNK)
    path = write_image(tmp / "d.img")
    point, _ = backup(repo, path)
    return repo, path.read_bytes(), repo.load_point(point.id)


def _roll(repo: Repository, point: Any, path: Path, areas: Any, workers: int = 4) -> Any:
    fd = os.open(path, os.O_RDWR)
    try:
        with PointReader(repo, point, 0) as reader:
            return roll_back(reader, fd, areas, workers=workers)
    finally:
        os.close(fd)


def test_changed_areas_are_put_back_and_nothing_else_is_touched(
    saved: tuple[Repository, bytes, Any], tmp_path: Path
) -> None:
    repo, original, point = saved
    disk = tmp_path / "disk"
    disk.write_bytes(original)
    changed = [(CHUNK - 100, 300), (5 * CHUNK, 2 * CHUNK + 17), (3_000_000, 4096)]
    scribble(disk, changed)
    outside = (20 * CHUNK, 1000)  # changed, but not reported: must stay as it is
    scribble(disk, [outside], seed=9)
    stray = disk.read_bytes()[outside[0]:sum(outside)]
    stats = _roll(repo, point, disk, changed)
    now = disk.read_bytes()
    assert stats.bytes_checked == sum(n for _, n in changed)
    assert 0 < stats.bytes_written <= stats.bytes_checked
    assert now[outside[0]:sum(outside)] == stray
    expected = bytearray(original)
    expected[outside[0]:sum(outside)] = stray
    assert now == bytes(expected)
    assert _roll(repo, point, disk, changed).bytes_written == 0  # idempotent


def test_the_whole_disk_is_compared_when_no_areas_are_known(
    saved: tuple[Repository, bytes, Any], tmp_path: Path
) -> None:
    repo, original, point = saved
    disk = tmp_path / "disk"
    disk.write_bytes(original[: len(original) // 2])  # a thin file that stops early
    stats = _roll(repo, point, disk, None)
    assert disk.read_bytes() == original
    assert stats.bytes_checked == len(original)
    assert stats.bytes_written < len(original)  # the zero tail past the end was not written


@settings(max_examples=25, deadline=None,
          suppress_health_check=[*SUPPRESSED, HealthCheck.function_scoped_fixture])
@given(areas=st.lists(st.tuples(st.integers(0, 3_200_000), st.integers(1, 200_000)),
                      max_size=6))
def test_any_areas_any_overlap(saved: tuple[Repository, bytes, Any], tmp_path: Path,
                               areas: list[tuple[int, int]]) -> None:
    repo, original, point = saved
    disk = tmp_path / "disk-h"
    disk.write_bytes(original)
    inside = [(o, min(n, len(original) - o)) for o, n in areas if o < len(original)]
    scribble(disk, inside, seed=len(areas))
    _roll(repo, point, disk, areas)
    assert disk.read_bytes() == original


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_one_thread_or_several_roll_back_the_same(
    saved: tuple[Repository, bytes, Any], tmp_path: Path, workers: int
) -> None:
    repo, original, point = saved
    disk = tmp_path / "disk"
    disk.write_bytes(original)
    changed = [(k * 3 * CHUNK + 1000, CHUNK + 5000) for k in range(12)]
    scribble(disk, changed, seed=workers)
    stats = _roll(repo, point, disk, [*changed, (changed[0][0], 10)], workers=workers)
    assert disk.read_bytes() == original
    assert stats.bytes_checked == sum(n for _, n in changed)  # overlapping areas: once
    assert stats.bytes_written >= sum(n for _, n in changed)


def test_a_failing_chunk_stops_every_writer_before_the_error_returns(
    saved: tuple[Repository, bytes, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    repo, original, point = saved
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(len(original)))  # every chunk differs
    writing = threading.Event()
    real_pwrite = os.pwrite

    def slow_pwrite(fd: int, data: bytes, offset: int) -> int:
        writing.set()
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    real = PointReader.chunk_data

    def chunk_data(self: PointReader, i: int) -> bytes | None:
        if i == 7:
            raise OSError("repository gone")
        return real(self, i)

    monkeypatch.setattr(PointReader, "chunk_data", chunk_data)
    with pytest.raises(OSError, match="repository gone"):
        _roll(repo, point, disk, None, workers=4)
    assert writing.is_set()
    after = disk.read_bytes()
    monkeypatch.setattr(os, "pwrite", lambda *a: pytest.fail("written after the error"))
    assert disk.read_bytes() == after
    monkeypatch.undo()
    _roll(repo, point, disk, None)  # the interrupted rollback finishes when run again
    assert disk.read_bytes() == original
