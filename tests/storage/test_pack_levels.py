"""Each zstd blob's pack entry records the level it was compressed at: written by the image
data path (stronger levels while it waits for reads), kept by prune's repack, summarised by
``check`` / ``stats --levels``; packs written before (byte 0, "kind") read as "unrecorded"."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import zstandard

from tests.storage.storage_helpers import backup
from tests.storage.test_image_cdc import FIXTURE, FRAME, files_blob, guest_image
from vmkeep.storage import disk_backup
from vmkeep.storage.checker import check_repository
from vmkeep.storage.codec import CODEC_RAW, CODEC_RECIPE, CODEC_ZSTD
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.pack import ENTRY, PackBuilder, parse_pack
from vmkeep.storage.pack_levels import LevelSummary, pack_levels
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository


def _zstd(level: int, data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


@pytest.mark.parametrize("version", [1, 2])
def test_a_pack_entry_records_the_level_of_a_zstd_blob(version: int) -> None:
    text = b"the same words again " * 400
    builder = PackBuilder(version)
    builder.add(b"a" * 32, CODEC_ZSTD, _zstd(3, text), len(text), 3)
    builder.add(b"b" * 32, CODEC_RAW, b"raw", 3, 3)  # raw: nothing to record
    builder.add(b"c" * 32, CODEC_RECIPE, b"VMKR\0\0\0\0", 1 << 20)
    builder.add(b"d" * 32, CODEC_ZSTD, _zstd(1, text), len(text))  # level not known
    _pack_id, data, written = builder.finish()
    parsed = parse_pack(data, "t")
    assert parsed == written
    assert [e.level for e in parsed] == [3, None, None, None]
    with pytest.raises(ValueError):
        PackBuilder(version).add(b"e" * 32, CODEC_ZSTD, b"x", 1, 200)


def test_a_pack_from_before_levels_reads_as_unrecorded() -> None:
    """The level byte was "kind": always 0, ignored by every reader (so older vmkeep reads
    newer packs too: the other fields are where they were)."""
    text = b"older pack " * 300
    builder = PackBuilder(2)
    builder.add(b"a" * 32, CODEC_ZSTD, _zstd(1, text), len(text), 1)
    _pack_id, data, _ = builder.finish()
    trailer_len = int.from_bytes(data[-12:-8], "little")
    start = len(data) - 12 - trailer_len
    fields = ENTRY.unpack_from(data, start)
    assert fields[2] == 1  # recorded...
    old = bytearray(data)
    old[start + 33] = 0  # ...and as the code before levels wrote it
    (entry,) = parse_pack(bytes(old), "t")
    assert entry.level is None and entry.codec == CODEC_ZSTD
    summary = LevelSummary()
    assert summary.add_pack([entry]) == "unrecorded"
    assert summary.to_json() == {"blobs": {"unrecorded": 1}, "packs": {"unrecorded": 1}}


def _reads_dominate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic: every chunk counts as waiting for reads (ratio −1), decided per chunk,
    so the first chunk is compressed at the repository's level and the rest at level 3."""
    original = disk_backup.LevelPolicy.__init__

    def init(self: disk_backup.LevelPolicy, base: int, **_: object) -> None:
        original(self, base, high=3, window=1, ratio=-1.0)

    monkeypatch.setattr(disk_backup.LevelPolicy, "__init__", init)


def test_backups_record_each_blobs_level_and_check_and_prune_keep_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _reads_dominate(monkeypatch)
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME)
    img = guest_image(tmp_path / "a.img", 0, files_blob(21, 6 * FRAME))
    point, _ = backup(repo, img, name="a")
    per_disk = repo.load_point(point.id).disks[0].extra["zstd_levels"]
    assert set(per_disk) == {"1", "3"}

    summary, per_pack = pack_levels(repo)
    assert set(summary.blobs) == {"1", "3"}
    assert "1,3" in summary.packs.keys() | set(per_pack.values())
    report = check_repository(repo, read_data=True)
    assert report.ok
    assert report.to_json()["zstd_levels"] == summary.to_json()

    # a second image shares the first's first half: forgetting the first repacks its packs
    other = guest_image(tmp_path / "b.img", 0, files_blob(21, 6 * FRAME)[: 3 * FRAME])
    backup(repo, other, name="b")
    before = pack_levels(repo)[0].blobs
    forget_ids(repo, [point.id])
    result = prune(Repository.open(repo.backend.location), grace=timedelta(0), repack_below=1.0)
    assert result.packs_repacked >= 1
    after = pack_levels(Repository.open(repo.backend.location))[0].blobs
    assert "unrecorded" not in after and set(after) <= set(before)
    assert check_repository(Repository.open(repo.backend.location), read_data=True).ok


def test_the_version_1_fixture_checks_with_levels_unrecorded(tmp_path: Path) -> None:
    root = tmp_path / "repo-v1"
    shutil.copytree(FIXTURE, root)
    report = check_repository(Repository.open(str(root)))
    assert report.ok
    levels = report.to_json()["zstd_levels"]
    assert set(levels["blobs"]) <= {"unrecorded"} and set(levels["packs"]) <= {"unrecorded", "none"}
