"""check names damage with every affected restore point, disk and offset; restore fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup
from vmkeep.storage.checker import check_repository
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.errors import BlobMissing, DataCorrupt
from vmkeep.storage.repository import Repository


def test_clean_repository_checks_clean(repo: Repository, image: Path) -> None:
    backup(repo, image)
    report = check_repository(repo, read_data=True)
    assert report.ok and report.points == 1 and report.bytes_read > 0


def test_flipped_byte_is_reported_and_restore_fails(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    p1, _ = backup(repo, image)
    p2, _ = backup(repo, image, name="other")  # deduplicated: references the same chunks
    key, _size = max(repo.backend.list("packs"), key=lambda ks: ks[1])  # data, not recipes
    path = Path(repo.backend.location) / key
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))

    fresh = Repository.open(repo.backend.location)
    assert check_repository(fresh).ok  # structure alone cannot see it
    report = check_repository(fresh, read_data=True)
    assert not report.ok
    affected = [a for p in report.problems for a in p.affected]
    assert {a["point"] for a in affected} == {p1.id, p2.id}
    assert all(a["disk"] == 0 and isinstance(a["offset"], int) for a in affected)
    with pytest.raises(DataCorrupt):
        restore_disk(fresh, fresh.load_point(p1.id), 0, str(tmp_path / "out.img"))
    assert not (tmp_path / "out.img").exists()


def test_deleted_pack_is_reported(repo: Repository, image: Path, tmp_path: Path) -> None:
    p1, _ = backup(repo, image)
    key, _ = next(iter(repo.backend.list("packs")))
    repo.backend.delete(key)
    fresh = Repository.open(repo.backend.location)
    report = check_repository(fresh)
    kinds = {p.kind for p in report.problems}
    assert kinds == {"missing-pack"}
    assert {a["point"] for p in report.problems for a in p.affected} == {p1.id}
    with pytest.raises(BlobMissing):
        restore_disk(fresh, fresh.load_point(p1.id), 0, str(tmp_path / "out.img"))


def test_tampered_manifest_is_reported(repo: Repository, image: Path) -> None:
    p1, _ = backup(repo, image)
    path = Path(repo.backend.location) / f"manifests/{p1.id}.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = check_repository(Repository.open(repo.backend.location))
    assert [p.kind for p in report.problems] == ["bad-manifest"]
    with pytest.raises(DataCorrupt):
        Repository.open(repo.backend.location).load_point(p1.id)


def test_a_percentage_reads_that_share_of_the_packs_at_random(tmp_path: Path) -> None:
    """``--read-data-subset 5%`` as restic has it: a share of the packs drawn at random (at
    least one); ``N/M`` shares stay as they were."""
    import os

    from vmkeep.storage.checker import parse_subset

    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, pack_size=1 << 20)
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(12 << 20))  # incompressible: a dozen 1 MiB packs
    backup(repo, image)
    packs = sorted(p.stat().st_size for p in (tmp_path / "repo" / "packs").rglob("*")
                   if p.is_file())
    assert len(packs) >= 10, packs
    everything = check_repository(repo, read_data=True).bytes_read
    assert check_repository(repo, read_data=True, subset=parse_subset("100%")).bytes_read \
        == everything
    one = check_repository(repo, read_data=True, subset=parse_subset("1%"))
    assert one.ok and one.bytes_read in packs  # at least one pack: exactly one here
    some = check_repository(repo, read_data=True, subset=parse_subset("50%"))
    assert some.ok and everything * 0.3 < some.bytes_read < everything * 0.7


@pytest.mark.parametrize("text", ["0%", "101%", "-5%", "nan%", "inf%", "x%", "%", "3/2",
                                  "0/5", "1/0", "a/b", "5"])
def test_a_subset_that_is_no_share_is_refused(text: str) -> None:
    from vmkeep.storage.checker import parse_subset

    with pytest.raises(ValueError, match="want N/M"):
        parse_subset(text)
