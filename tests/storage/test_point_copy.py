"""Copies of restore points into another repository (``vmkeep copy``, the ``copy`` job): image
and file points, incremental by the manifests' differences, other chunk sizes and keys, a damaged
source, the selection rules — every copy restored and compared with what was backed up."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.fast_kdf import fast_kdf
from tests.guestfiles.files_helpers import (
    build_tree,
    change_tree,
    comparable,
    hardlink_groups,
    snapshot,
)
from tests.storage.storage_helpers import backup, restored_sha, scribble, sha, write_image
from vmkeep.errors import UsageError
from vmkeep.guestfiles.backup import commit_file_point
from vmkeep.guestfiles.local import LocalSource
from vmkeep.guestfiles.restore import restore_paths
from vmkeep.jobs.copy_points import CopyIncomplete, SourcePasswordRequired, copy_points
from vmkeep.jobs.maintenance_specs import CopySpec
from vmkeep.runtime.local import LocalRuntime
from vmkeep.storage.checker import check_repository
from vmkeep.storage.errors import TargetFull
from vmkeep.storage.file_backup import backup_files
from vmkeep.storage.file_manifest import latest_file_point
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.pack import pack_key
from vmkeep.storage.point_copy import CopyRecord, differing_extents
from vmkeep.storage.repository import Repository

CHUNK = 64 * 1024
__all__ = ["fast_kdf"]  # fixture


def copy(dest: Path | str, source: Path | str, **spec: Any) -> dict[str, Any]:
    result: dict[str, Any] = copy_points(
        CopySpec(repo=str(dest), from_repo=str(source), **spec), LocalRuntime())
    return result


def back_up_files(repo: Repository, src: Path, name: str = "files") -> None:
    parent = latest_file_point(repo, name)
    result = backup_files(repo, LocalSource(src), parent)
    commit_file_point(repo, name, result, source=str(src), client="t",
                      parent=parent.id if parent else None)


@pytest.fixture
def two(tmp_path: Path) -> tuple[Repository, Path]:
    """A source repository with 64 KiB frames, and an empty destination with the default 1 MiB
    frames (so every image copy also crosses chunk sizes)."""
    source = Repository.init(str(tmp_path / "src"), image_chunk_size=CHUNK)
    Repository.init(str(tmp_path / "dst"))
    return source, tmp_path / "dst"


def test_image_points_copy_incrementally_and_restore_bit_identical(
    two: tuple[Repository, Path], tmp_path: Path
) -> None:
    source, dst = two
    image = write_image(tmp_path / "disk.img", size=16 * 1024 * 1024 + 777)
    first, _ = backup(source, image)
    digests = {first.id: sha(image)}
    scribble(image, [(100_000, 5000), (9 * 1024 * 1024, 70_000)])
    second, _ = backup(source, image)
    digests[second.id] = sha(image)

    done = copy(dst, source.backend.location)
    assert [r["source"] for r in done["copied"]] == [first.id, second.id]
    assert done["skipped"] == 0 and done["failed"] == []
    full, incr = done["copied"]
    assert full["disks"][0]["mode"] == "full"
    # the second copy reads only the chunks whose ids differ between the two source points
    assert incr["disks"][0]["mode"] == "cbt"
    assert incr["bytes_read"] <= 3 * CHUNK + 2 * 1024 * 1024  # ≤ 2 destination frames' worth
    assert full["bytes_read"] >= 10 * 1024 * 1024  # the non-zero frames

    dest = Repository.open(str(dst))
    for row in done["copied"]:
        copied = dest.load_point(row["id"])
        original = source.load_point(row["source"])
        assert (copied.name, copied.kind, copied.time) == (original.name, original.kind,
                                                          original.time)
        assert copied.hostname == original.hostname
        assert copied.disks[0].chunk_size == 1024 * 1024  # the destination's own frames
        record = CopyRecord.from_meta(copied.meta)
        assert record is not None and record.point == original.id
        assert record.from_repo == source.config.id
        assert restored_sha(dest, copied.id, tmp_path) == digests[original.id]
    assert dest.load_point(incr["id"]).parent == full["id"]
    report = check_repository(dest, read_data=True)
    assert report.ok, report

    again = copy(dst, source.backend.location)
    assert again["copied"] == [] and again["skipped"] == 2


def test_a_forgotten_base_is_scanned_and_a_resized_disk_too(
    two: tuple[Repository, Path], tmp_path: Path
) -> None:
    source, dst = two
    image = write_image(tmp_path / "disk.img", size=2 * 1024 * 1024)
    first, _ = backup(source, image)
    copy(dst, source.backend.location)
    forget_ids(source, [first.id])
    scribble(image, [(10, 10)])
    backup(source, image)
    [row] = copy(dst, source.backend.location)["copied"]
    assert row["disks"][0]["mode"] == "scan", row
    assert "gone" in row["disks"][0]["reason"]
    dest = Repository.open(str(dst))
    assert restored_sha(dest, row["id"], tmp_path) == sha(image)

    with open(image, "ab") as f:
        f.write(os.urandom(300_000))
    backup(source, image)
    [row] = copy(dst, source.backend.location)["copied"]
    assert row["disks"][0]["mode"] == "scan" and "size" in row["disks"][0]["reason"]
    assert restored_sha(Repository.open(str(dst)), row["id"], tmp_path) == sha(image)


def test_chunk_range_records_are_converted_to_the_destination_chunk_size(
    two: tuple[Repository, Path], tmp_path: Path
) -> None:
    source, dst = two
    image = write_image(tmp_path / "disk.img", size=2 * 1024 * 1024)
    cbt = {"changed_ranges": [[3, 5], [17, 18]], "zeroed_ranges": [[20, 32]],
           "incrementals": 1}
    backup(source, image, extra={"change_id": "52 aa/7", "cbt": cbt})
    [row] = copy(dst, source.backend.location)["copied"]
    extra = Repository.open(str(dst)).load_point(row["id"]).disks[0].extra
    assert extra["change_id"] == "52 aa/7"
    # 64 KiB chunks 3-5 and 17-18 lie in 1 MiB frames 0 and 1; 20-32 in frames 1-2
    assert extra["cbt"] == {**cbt, "changed_ranges": [[0, 1], [1, 2]],
                            "zeroed_ranges": [[1, 2]]}


def test_file_points_copy_with_links_xattrs_and_holes_and_incrementally(
    two: tuple[Repository, Path], tmp_path: Path
) -> None:
    source, dst = two
    src = tmp_path / "tree"
    build_tree(src)
    sparse = src / "sparse.img"
    with open(sparse, "wb") as f:  # a large file with a 20 MiB hole: stays a hole
        f.write(os.urandom(1 << 20))
        f.seek(21 << 20)
        f.write(os.urandom(1 << 20))
    back_up_files(source, src)
    before = snapshot(src)
    change_tree(src)
    back_up_files(source, src)
    after = snapshot(src)

    done = copy(dst, source.backend.location)
    first, second = done["copied"]
    assert first["files_read"] >= 6
    # the files the source's own incremental read (changed content, times or status), no more
    original = latest_file_point(source, "files")
    assert original is not None
    assert second["files_read"] == original.stats["files_read"] <= 5, second
    assert second["bytes_read"] < 4 << 20  # neither the sparse file nor unchanged files
    dest = Repository.open(str(dst))
    for row, expect in ((first, before), (second, after)):
        out = tmp_path / f"out-{row['short_id']}"
        out.mkdir()
        assert restore_paths(dest, row["id"], ["/"], out).ok
        got = snapshot(out)
        assert comparable(got) == comparable(expect)
        assert hardlink_groups(got) == hardlink_groups(expect)
        if row is second:
            assert os.stat(out / "sparse.img").st_blocks * 512 < 4 << 20  # the hole kept
    copied = latest_file_point(dest, "files")
    assert copied is not None
    assert (copied.time, copied.source, copied.client) == (original.time, original.source,
                                                           original.client)
    assert copied.parent == first["id"]
    assert check_repository(dest, read_data=True).ok


def test_a_damaged_source_point_is_not_copied_and_the_others_are(
    two: tuple[Repository, Path], tmp_path: Path
) -> None:
    source, dst = two
    image = write_image(tmp_path / "disk.img", size=1024 * 1024)
    backup(source, image, name="good")
    other = tmp_path / "other.img"
    other.write_bytes(os.urandom(512 * 1024))
    bad, _ = backup(source, other, name="bad")
    packs = {e.pack_id for e in (source.index.get(bad.chunks[0].blob_id(0)),) if e}
    for pack in packs:
        os.remove(Path(source.backend.location) / pack_key(pack))
    fresh = Repository.open(source.backend.location)
    with pytest.raises(CopyIncomplete) as err:
        copy(dst, fresh.backend.location)
    summary = err.value.summary
    assert [r["name"] for r in summary["copied"]] == ["good"]
    assert [r["name"] for r in summary["failed"]] == ["bad"]
    assert err.value.exit_code == 1 and "bad" in err.value.get_message()
    dest = Repository.open(str(dst))
    assert [p.name for p in dest.list_points()] == ["good"]  # nothing half-committed


def test_encrypted_source_other_password_and_selection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_kdf: int
) -> None:
    source = Repository.init(str(tmp_path / "src"), password="source secret")
    Repository.init(str(tmp_path / "dst"), password="destination secret")
    image = write_image(tmp_path / "disk.img", size=256 * 1024)
    for name in ("web01", "web02", "db01"):
        backup(source, image, name=name)
    scribble(image, [(0, 10)])
    backup(source, image, name="web01")
    monkeypatch.setenv("VMKEEP_PASSWORD", "destination secret")
    with pytest.raises(SourcePasswordRequired, match="VMKEEP_FROM_PASSWORD"):
        monkeypatch.delenv("VMKEEP_PASSWORD")
        copy(tmp_path / "dst", tmp_path / "src")
    monkeypatch.setenv("VMKEEP_PASSWORD", "destination secret")
    secret = tmp_path / "from-pw"
    secret.write_text("source secret\n")
    monkeypatch.setenv("VMKEEP_FROM_PASSWORD_FILE", str(secret))

    done = copy(tmp_path / "dst", tmp_path / "src", names=["web*"], latest=True)
    assert sorted(r["name"] for r in done["copied"]) == ["web01", "web02"]
    web01 = next(r for r in done["copied"] if r["name"] == "web01")
    assert web01["source"] == source.resolve("web01@latest")
    dest = Repository.open(str(tmp_path / "dst"))
    assert restored_sha(dest, web01["id"], tmp_path) == sha(image)
    assert [r["name"] for r in copy(tmp_path / "dst", tmp_path / "src",
                                    points=["db01@latest"])["copied"]] == ["db01"]


def test_copies_do_not_come_back_and_a_repository_is_not_its_own_copy(
    two: tuple[Repository, Path], tmp_path: Path
) -> None:
    source, dst = two
    image = write_image(tmp_path / "disk.img", size=256 * 1024)
    backup(source, image)
    assert len(copy(dst, source.backend.location)["copied"]) == 1
    back = copy(source.backend.location, dst)  # the other way: the copy came from there
    assert back["copied"] == [] and back["skipped"] == 1
    with pytest.raises(UsageError, match="same repository"):
        copy(dst, dst)
    mirror = tmp_path / "mirror"
    shutil.copytree(dst, mirror)  # a file-level mirror is the same repository
    with pytest.raises(UsageError, match="same repository"):
        copy(mirror, dst)


def test_differing_extents_join_neighbours_and_refuse_other_layouts() -> None:
    from vmkeep.storage.manifest import ChunkTable

    def table(ids: list[int], size: int = 4) -> ChunkTable:
        t = ChunkTable()
        for i, v in enumerate(ids):
            t.append(i * size, size, bytes([v]) * 32, bytes(16))
        return t

    assert differing_extents(table([1, 2, 3, 4]), table([1, 9, 9, 4])) == [(4, 8)]
    assert differing_extents(table([1, 2, 3, 4]), table([9, 2, 9, 4])) == [(0, 4), (8, 4)]
    assert differing_extents(table([1, 2]), table([1, 2, 3])) is None
    assert differing_extents(table([1, 2], 4), table([1, 2], 8)) is None


def test_a_full_destination_stops_the_copy_cleanly_and_the_next_run_carries_on(
    small_fs: Path, tmp_path: Path
) -> None:
    source = Repository.init(str(tmp_path / "src"), image_chunk_size=CHUNK)
    dst = small_fs / "offsite"
    Repository.init(str(dst), pack_size=1 << 20)
    small = write_image(tmp_path / "small.img", size=1 << 20)
    backup(source, small, name="small")
    big = tmp_path / "big.img"
    big.write_bytes(os.urandom(12 << 20))
    backup(source, big, name="big")
    with pytest.raises(TargetFull) as err:
        copy(dst, source.backend.location)
    assert err.value.exit_code == 15
    dest = Repository.open(str(dst))
    assert [p.name for p in dest.list_points()] == ["small"]  # nothing half-committed
    assert check_repository(dest, read_data=True).ok

    forget_ids(source, [source.resolve("big@latest")])  # what no longer needs copying
    done = copy(dst, source.backend.location)
    assert done["copied"] == [] and done["skipped"] == 1


def test_a_version_1_destination_takes_copies_of_a_newer_source(
    two: tuple[Repository, Path], tmp_path: Path
) -> None:
    source, _ = two
    old = Repository.init(str(tmp_path / "v1"), image_cdc=None)
    assert old.config.version == 1
    image = write_image(tmp_path / "disk.img", size=3 << 20)
    backup(source, image)
    [row] = copy(old.backend.location, source.backend.location)["copied"]
    assert restored_sha(Repository.open(old.backend.location), row["id"], tmp_path) == sha(image)


def test_a_damaged_source_manifest_is_left_out_with_a_warning(
    two: tuple[Repository, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, dst = two
    image = write_image(tmp_path / "disk.img", size=256 * 1024)
    good, _ = backup(source, image, name="good")
    bad, _ = backup(source, image, name="bad")
    manifest = Path(source.backend.location) / "manifests" / f"{bad.id}.parquet"
    manifest.write_bytes(manifest.read_bytes()[:-10])
    done = copy(dst, source.backend.location)
    assert [r["source"] for r in done["copied"]] == [good.id]
    assert [d["id"] for d in done["damaged"]] == [bad.id]
    assert any(bad.id[:8] in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
