"""Prune clears leftovers: temporary objects of crashed writers (only once older than the grace
and than an hour) and catalogs of restore points that no longer exist; it validates image
manifests column-wise and enumerates file restore points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.storage.storage_helpers import backup, restored_sha, sha, write_image
from vmkeep.storage.backend import TEMP_MARKER
from vmkeep.storage.catalogs import CATALOG_PREFIX
from vmkeep.storage.checker import check_repository
from vmkeep.storage.errors import FormatError
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.manifest import (
    ChunkTable,
    DiskInfo,
    RestorePoint,
    decode_point,
    encode_point,
    iter_blob_ids,
    point_key,
)
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

ZERO = timedelta(0)
HOUR = 3600.0


@pytest.fixture
def small_repo(tmp_path: Path) -> Repository:
    return Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, pack_size=256 << 10)


def leave_temp(root: Path, sub: str, age_s: float, size: int = 100) -> Path:
    """A temporary file as a crashed writer leaves it, ``age_s`` seconds old."""
    folder = root / sub
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TEMP_MARKER}{uuid.uuid4().hex[:16]}"
    path.write_bytes(os.urandom(size))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def temps(root: Path) -> set[Path]:
    return {Path(d) / n for d, _, files in os.walk(root) for n in files if TEMP_MARKER in n}


def test_prune_removes_old_temporary_files_only(small_repo: Repository, tmp_path: Path) -> None:
    repo = small_repo
    p, _ = backup(repo, write_image(tmp_path / "a.img"))
    root = Path(repo.backend.location)
    pack_dir = next(d for d, _, files in os.walk(root / "packs") if files)
    rel_pack_dir = os.path.relpath(pack_dir, root)
    old = {
        leave_temp(root, rel_pack_dir, 30 * HOUR, 1000),
        leave_temp(root, "index", 30 * HOUR, 200),
        leave_temp(root, "manifests", 50 * HOUR, 300),
        leave_temp(root, "", 30 * HOUR, 400),  # config's folder: the repository root
    }
    young = {
        leave_temp(root, rel_pack_dir, 0),  # a write in flight
        leave_temp(root, "locks", 10),  # a lock being taken while prune runs
        leave_temp(root, "index", 20 * HOUR),  # younger than the default grace
    }
    assert temps(root) == old | young
    assert all(TEMP_MARKER not in k for k, _ in repo.backend.list("packs"))  # never listed

    day = timedelta(hours=24)
    dry = prune(repo, grace=day, dry_run=True)
    assert dry.temp_files_deleted == 4 and dry.temp_bytes_deleted == 1900
    assert temps(root) == old | young
    report = prune(repo, grace=day)
    assert report.temp_files_deleted == 4 and report.temp_bytes_deleted == 1900
    assert temps(root) == young
    # grace 0 still spares anything younger than an hour (a put in flight)
    report = prune(repo, grace=ZERO)
    assert report.temp_files_deleted == 1 and temps(root) == young - {
        p for p in young if "index" in p.parts
    }
    fresh = Repository.open(str(root))
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, p.id, tmp_path) == sha(tmp_path / "a.img")


def test_temporary_files_in_an_encrypted_repository(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, password="pw")
    backup(repo, write_image(tmp_path / "a.img"))
    root = Path(repo.backend.location)
    leave_temp(root, "manifests", 2 * HOUR)
    assert prune(repo, grace=ZERO).temp_files_deleted == 1
    assert not temps(root)


def test_prune_cli_reports_leftovers(small_repo: Repository, tmp_path: Path) -> None:
    repo = small_repo
    backup(repo, write_image(tmp_path / "a.img"))
    root = Path(repo.backend.location)
    leave_temp(root, "index", 2 * HOUR, 123)
    repo.backend.put(f"{CATALOG_PREFIX}/{'ab' * 32}.parquet", b"orphan")
    env = dict(os.environ, VMKEEP_REPO=str(root), PREFECT_API_URL="")
    cli = [sys.executable, "-m", "tests.support.run_cli", "prune", "--grace", "0s"]
    out = subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["temp_files_deleted"] == 1 and report["temp_bytes_deleted"] == 123
    assert report["catalogs_deleted"] == 1
    assert not temps(root)
    leave_temp(root, "index", 2 * HOUR, 10)
    out = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1 leftover temporary file(s)" in out.stderr


def test_prune_removes_old_temporary_files_over_sftp(sftp_server: Any, tmp_path: Path) -> None:
    sub = f"repo-{uuid.uuid4().hex}"
    url, options = sftp_server.url(sub), sftp_server.options()
    repo = Repository.init(url, options, image_chunk_size=64 * 1024, pack_size=512 << 10)
    p, _ = backup(repo, write_image(tmp_path / "a.img"))
    root = Path(sftp_server.root) / sub
    old = {leave_temp(root, "index", 2 * HOUR, 50), leave_temp(root, "", 2 * HOUR, 60)}
    young = leave_temp(root, "index", 0)
    listed = {k for k, _, _ in repo.backend.list_temporary("")}
    assert listed == {str(path.relative_to(root)) for path in old | {young}}
    report = prune(repo, grace=ZERO)
    assert report.temp_files_deleted == 2 and report.temp_bytes_deleted == 110
    assert temps(root) == {young}
    assert restored_sha(Repository.open(url, options), p.id, tmp_path) == sha(tmp_path / "a.img")


def test_prune_deletes_catalogs_of_forgotten_points(small_repo: Repository, tmp_path: Path) -> None:
    repo = small_repo
    a, _ = backup(repo, write_image(tmp_path / "a.img", seed=1), name="a")
    b, _ = backup(repo, write_image(tmp_path / "b.img", seed=2), name="b")
    for point in (a, b):
        repo.backend.put(f"{CATALOG_PREFIX}/{point.id}.parquet", b"catalog of " + point.id.encode())
    repo.backend.put(f"{CATALOG_PREFIX}/{'cd' * 32}.parquet", b"never had a point")
    repo.backend.put(f"{CATALOG_PREFIX}/README", b"not a catalog: left alone")
    forget_ids(repo, [b.id])
    # forget may already delete the catalog of the point it forgets; put it back as a crash would
    repo.backend.put(f"{CATALOG_PREFIX}/{b.id}.parquet", b"stale")

    def catalogs() -> set[str]:
        return {k for k, _ in repo.backend.list(CATALOG_PREFIX)}

    before = catalogs()
    dry = prune(repo, dry_run=True)
    assert dry.catalogs_deleted == 2 and catalogs() == before
    report = prune(repo)  # default grace: catalogs are derived data, deleted at any age
    assert report.catalogs_deleted == 2
    assert catalogs() == {f"{CATALOG_PREFIX}/{a.id}.parquet", f"{CATALOG_PREFIX}/README"}
    assert prune(repo).catalogs_deleted == 0


def test_catalog_key_uses_the_storage_prefix() -> None:
    from vmkeep.browse.catalog import catalog_key

    assert catalog_key("ab" * 32) == f"{CATALOG_PREFIX}/{'ab' * 32}.parquet"


# -- mark: column-wise validation of image manifests; file points ------------------------------
def _point(offsets_lengths: list[tuple[int, int]], size: int) -> RestorePoint:
    table = ChunkTable()
    for n, (offset, length) in enumerate(offsets_lengths):
        table.append(offset, length, bytes([n + 1]) * 32, bytes(16))
    from datetime import UTC, datetime

    disk = DiskInfo(0, "disk0", size, 64 * 1024)
    return RestorePoint("x", "image", datetime(2025, 1, 1, tzinfo=UTC), [disk], {0: table})


@pytest.mark.parametrize(
    ("chunks", "size", "ok"),
    [
        ([(0, 10), (10, 20)], 30, True),
        ([(0, 10), (11, 20)], 31, False),  # a gap
        ([(0, 10), (5, 20)], 25, False),  # an overlap
        ([(0, 10), (10, 20)], 40, False),  # short of the disk size
        ([(0, 0), (0, 20)], 20, False),  # an empty chunk
    ],
)
def test_column_reader_validates_like_decode_point(
    chunks: list[tuple[int, int]], size: int, ok: bool
) -> None:
    point_id, data = encode_point(_point(chunks, size))
    if ok:
        ids = b"".join(a.buffers()[1].to_pybytes() for a in iter_blob_ids(data, point_id))
        assert ids == bytes(decode_point(data, point_id).chunks[0].ids)
        return
    with pytest.raises(FormatError):
        decode_point(data, point_id)
    with pytest.raises(FormatError):
        list(iter_blob_ids(data, point_id))


def test_prune_refuses_a_manifest_that_does_not_tile(
    small_repo: Repository, tmp_path: Path
) -> None:
    repo = small_repo
    p, _ = backup(repo, write_image(tmp_path / "a.img"))
    good = decode_point(repo.backend.get(point_key(p.id)), p.id)
    good.chunks[0].offsets[1] += 1  # the same chunks, one shifted: no longer a disk image
    bad_id, bad = encode_point(good)
    repo.backend.put(point_key(bad_id), bad)
    forget_ids(repo, [p.id])
    packs = sorted(repo.backend.list("packs"))
    with pytest.raises(FormatError):
        prune(repo, grace=ZERO)
    assert sorted(repo.backend.list("packs")) == packs


def test_prune_keeps_the_data_of_file_restore_points(
    small_repo: Repository, tmp_path: Path
) -> None:
    from vmkeep.guestfiles.backup import commit_file_point
    from vmkeep.guestfiles.local import LocalSource
    from vmkeep.storage.file_backup import backup_files

    repo = small_repo
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(600_000))
    (src / "small").write_bytes(b"hello")
    (src / "empty").write_bytes(b"")
    result = backup_files(repo, LocalSource(src), None)
    commit_file_point(repo, "files", result, source=str(src), client="t")
    img, _ = backup(repo, write_image(tmp_path / "a.img"))
    forget_ids(repo, [img.id])
    report = prune(repo, grace=ZERO)
    assert report.points == 1 and report.referenced_blobs > 0 and report.missing_blobs == 0
    assert report.packs_deleted + report.unindexed_packs_deleted > 0  # the image's data went
    fresh = Repository.open(repo.backend.location)
    assert check_repository(fresh, read_data=True).ok


def test_a_temporary_written_under_a_live_lease_survives_a_prune_whose_clock_runs_ahead(
    small_repo: Repository, tmp_path: Path
) -> None:
    """A backup holding a lease may be writing a temporary pack right now: a prune whose clock
    is far ahead (or a NAS whose mtimes lag) must not call it a crashed writer's leftover."""
    from datetime import UTC, datetime

    from vmkeep import clock
    from vmkeep.storage.prune import prune

    root = Path(small_repo.backend.location)
    writer = Repository.open(str(root))  # another process's backup, holding its lease
    with writer.lock("shared"):
        in_flight = leave_temp(root, "packs/ab", age_s=0)
        after = writer.held_locks()[0].info.created.timestamp() + 1  # written under the lease
        os.utime(in_flight, (after, after))
        with clock.frozen(datetime(2099, 1, 1, tzinfo=UTC)):
            prune(small_repo, grace=timedelta(0))
        assert in_flight.exists()
    with clock.frozen(datetime(2099, 1, 1, tzinfo=UTC)):
        prune(small_repo, grace=timedelta(0))  # no lease left: now it is a leftover
    assert not in_flight.exists()
