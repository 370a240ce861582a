"""Prune: deletes only what no restore point references, after the grace period, under the
exclusive lock; repacks; refuses manifests it cannot account for."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.storage.storage_helpers import backup, restored_sha, scribble, sha, write_image
from vmkeep import clock
from vmkeep.storage.checker import check_repository
from vmkeep.storage.disk_backup import backup_disk
from vmkeep.storage.errors import RepositoryLocked, UnknownPointKind
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.manifest import point_key
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

ZERO = timedelta(0)


@pytest.fixture
def small_repo(tmp_path: Path) -> Repository:
    return Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, pack_size=256 << 10)


def pack_bytes(repo: Repository) -> int:
    return sum(size for _, size in repo.backend.list("packs"))


def test_prune_frees_forgotten_data_and_keeps_the_rest(
    small_repo: Repository, tmp_path: Path
) -> None:
    repo = small_repo
    a = write_image(tmp_path / "a.img", seed=1)
    b = write_image(tmp_path / "b.img", seed=2)
    pa_, _ = backup(repo, a, name="a")
    pb, _ = backup(repo, b, name="b")
    scribble(a, [(0, 500_000)], seed=5)
    pa2, _ = backup(repo, a, name="a")
    ha2, hb = sha(a), sha(b)
    before = pack_bytes(repo)

    dry = prune(repo, grace=ZERO, dry_run=True)
    assert dry.packs_deleted == 0 and pack_bytes(repo) == before  # nothing forgotten yet
    forget_ids(repo, [pb.id, pa_.id])
    dry = prune(repo, grace=ZERO, dry_run=True)
    assert dry.to_delete and pack_bytes(repo) == before
    report = prune(repo, grace=ZERO)
    assert report.packs_deleted > 0 and report.missing_blobs == 0
    assert pack_bytes(repo) < before * 0.6
    fresh = Repository.open(repo.backend.location)
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, pa2.id, tmp_path) == ha2
    assert hb  # b is gone; its data may be gone too
    again = prune(fresh, grace=ZERO)
    assert again.packs_deleted == 0 and again.unindexed_packs_deleted == 0


def test_repack_keeps_referenced_blobs_of_mostly_unused_packs(
    tmp_path: Path,
) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, pack_size=8 << 20)
    a = write_image(tmp_path / "a.img", size=2 << 20, seed=1)
    p1, _ = backup(repo, a, name="a")  # one pack
    scribble(a, [(0, 400_000)], seed=3)
    p2, _ = backup(repo, a, name="a")  # the new version shares a fraction of the chunks
    h2 = sha(a)
    forget_ids(repo, [p1.id])
    report = prune(repo, grace=ZERO, repack_below=0.9)
    assert report.packs_repacked >= 1 and report.packs_written >= 1
    fresh = Repository.open(repo.backend.location)
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, p2.id, tmp_path) == h2
    indexes = [k for k, _ in fresh.backend.list("index")]
    meta = json.loads(pq.read_schema(io.BytesIO(fresh.backend.get(indexes[0]))).metadata[b"vmkeep"])
    assert meta["writer"] == "prune"


def test_grace_period_protects_an_unfinished_backup(small_repo: Repository, tmp_path: Path) -> None:
    """A session that wrote packs and its index but no manifest yet (a backup in flight that
    ignored locks) keeps its data for the grace period."""
    repo = small_repo
    img = write_image(tmp_path / "a.img")
    with open(img, "rb") as f:
        result = backup_disk(repo, f, img.stat().st_size)  # no commit_point: no manifest
    assert result.index_key
    before = pack_bytes(repo)
    report = prune(repo)  # default grace 24 h
    assert report.packs_deleted == 0 and pack_bytes(repo) == before
    with clock.frozen(clock.now() + timedelta(hours=25)):
        report = prune(repo)
    assert report.packs_deleted > 0 and pack_bytes(repo) == 0


def test_unindexed_packs_from_crashed_sessions_are_removed_after_grace(
    small_repo: Repository, tmp_path: Path
) -> None:
    repo = small_repo
    img = write_image(tmp_path / "a.img")
    p, _ = backup(repo, img)
    session = repo.write_session()
    session.add(b"\x01" * 32, 0, b"orphan" * 100, 600)
    session.flush()  # pack stored, but the index never written (a crash)
    session.abort()
    report = prune(repo, grace=timedelta(hours=1))
    assert report.unindexed_packs_deleted == 0
    report = prune(repo, grace=ZERO)
    assert report.unindexed_packs_deleted == 1
    assert restored_sha(Repository.open(repo.backend.location), p.id, tmp_path) == sha(img)


def test_lost_index_does_not_lose_referenced_data(small_repo: Repository, tmp_path: Path) -> None:
    repo = small_repo
    img = write_image(tmp_path / "a.img")
    p, _ = backup(repo, img)
    for key, _ in list(repo.backend.list("index")):
        repo.backend.delete(key)
    report = prune(repo, grace=ZERO)
    assert report.unindexed_packs_deleted == 0 and report.missing_blobs == 0
    fresh = Repository.open(repo.backend.location)
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, p.id, tmp_path) == sha(img)


def test_prune_runs_beside_leases_and_waits_for_them(
    small_repo: Repository, tmp_path: Path
) -> None:
    """GC v2: a lease never blocks prune; it only holds back deletions it might need."""
    repo = small_repo
    first, _ = backup(repo, write_image(tmp_path / "a.img"))
    backup(repo, write_image(tmp_path / "b.img", seed=9), name="b")
    forget_ids(repo, [first.id])
    other = Repository.open(repo.backend.location)
    lease = other.lock("shared")  # a backup that started before prune
    report = prune(repo, grace=ZERO)
    assert report.packs_deleted == 0 and report.packs_held_by_leases > 0
    assert report.bytes_held_by_leases > 0 and report.held_by
    lease.release()
    again = prune(repo, grace=ZERO)
    assert again.packs_deleted == report.packs_held_by_leases and again.bytes_freed > 0
    assert list(repo.backend.list("gc")) == []
    repo.close()  # its reader lease (taken when the backup loaded the index)
    other.close()
    with repo.lock("exclusive"), pytest.raises(RepositoryLocked):
        prune(repo, grace=ZERO)  # only exclusive operations stop prune
    with repo.lock("exclusive"):
        prune(repo, grace=ZERO, dry_run=True)  # read-only: no lock needed


def test_prune_refuses_manifests_it_cannot_account_for(
    small_repo: Repository, tmp_path: Path
) -> None:
    repo = small_repo
    p, _ = backup(repo, write_image(tmp_path / "a.img"))
    data = repo.backend.get(point_key(p.id))
    table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    meta = json.loads(table.schema.metadata[b"vmkeep"])
    meta["kind"] = "tape-catalogue"
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({b"vmkeep": json.dumps(meta).encode()}), sink)
    from blake3 import blake3

    odd = sink.getvalue()
    repo.backend.put(point_key(blake3(odd).hexdigest()), odd)
    forget_ids(repo, [p.id])  # now only the odd manifest references the data
    before = pack_bytes(repo)
    with pytest.raises(UnknownPointKind) as err:
        prune(repo, grace=ZERO)
    assert err.value.exit_code == 13
    assert pack_bytes(repo) == before
    repo.backend.put(point_key("ab" * 32), b"garbage")
    with pytest.raises(Exception):  # noqa: B017 - any typed storage error will do
        prune(repo, grace=ZERO)
    assert pack_bytes(repo) == before


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
def test_a_damaged_manifest_stops_prune_with_what_to_do(tmp_path: Path, encrypted: bool) -> None:
    """Prune cannot know what a restore point whose manifest does not read references: it deletes
    nothing and says how to go on (forget the point, or put the manifest back) — before, a bare
    ``Corrupt data in manifests/…`` (also from ``stats``).  Once the point is forgotten, prune
    goes on."""
    from vmkeep.storage.prune import DamagedPointStopsPrune

    password = "pw" if encrypted else None
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024,
                           pack_size=256 << 10, password=password)
    keep, _ = backup(repo, write_image(tmp_path / "a.img", 1 << 20, seed=1))
    lost, _ = backup(repo, write_image(tmp_path / "b.img", 1 << 20, seed=2))
    path = Path(repo.backend.location, point_key(lost.id))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    packs = sorted(k for k, _ in repo.backend.list("packs"))

    def reopen() -> Repository:
        return Repository.open(repo.backend.location, password=password)

    with pytest.raises(DamagedPointStopsPrune) as stopped:
        prune(reopen(), grace=ZERO)
    message = stopped.value.get_message()
    assert stopped.value.exit_code == 13
    assert lost.id[:8] in message and f"vmkeep forget {lost.id[:8]}" in message
    assert sorted(k for k, _ in repo.backend.list("packs")) == packs  # nothing deleted
    forget_ids(reopen(), [lost.id])
    report = prune(reopen(), grace=ZERO)
    assert report.points == 1  # it goes on (what only the forgotten point used is released)
    assert restored_sha(reopen(), keep.id, tmp_path) == sha(tmp_path / "a.img")
