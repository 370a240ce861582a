"""Content-defined pieces inside image frames (repository version 2): unaligned duplicates are
stored once, frames restore bit-identically and are hash-checked, prune keeps the pieces of
referenced frames, forged recipes are caught, and version-1 repositories (written by the code
before this format, ``fixtures/repo-v1``) keep reading, checking and taking backups.

The tests of pieces run against version 3 (each piece a blob of its own) and version 4 (a
frame's new pieces in one compression unit), which must behave the same."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
from datetime import timedelta
from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, restored_sha, sha
from vmkeep.storage.checker import check_repository
from vmkeep.storage.codec import CODEC_RECIPE, ZERO_ID, decode_recipe
from vmkeep.storage.config import RepoConfig
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.errors import DataCorrupt, FormatError
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.pack import pack_key
from vmkeep.storage.prune import prune
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import Repository

FIXTURE = Path(__file__).parent / "fixtures" / "repo-v1"
FRAME = 64 * 1024
#: repository versions with pieces inside frames that these tests hold to the same behaviour
PIECE_VERSIONS = pytest.mark.parametrize("version", [3, 4, 5])


def files_blob(seed: int, size: int) -> bytes:
    """Compressible, varied data (like files): words from a seeded vocabulary."""
    rng = random.Random(seed)
    letters = b"abcdefghij"
    words = [bytes(rng.choice(letters) for _ in range(rng.randrange(2, 9))) for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def guest_image(path: Path, lead_blocks: int, body: bytes) -> Path:
    """``body`` behind ``lead_blocks`` 4 KiB blocks of other data, padded to whole frames."""
    data = random.Random(lead_blocks).randbytes(lead_blocks * 4096) + body
    data += bytes(-len(data) % FRAME)
    path.write_bytes(data)
    return path


@PIECE_VERSIONS
def test_the_same_files_at_other_offsets_are_stored_once(tmp_path: Path, version: int) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, version=version)
    assert repo.config.version == version and repo.config.image_cdc is not None
    body = files_blob(1, 1 << 20) + random.Random(2).randbytes(256 * 1024)
    a = guest_image(tmp_path / "a.img", 3, body)
    b = guest_image(tmp_path / "b.img", 11, body)  # 32 KiB further: no frame is the same
    pa_, ra = backup(repo, a, name="a")
    pb, rb = backup(repo, b, name="b")
    assert rb.stats.chunks_new == rb.stats.chunks - rb.stats.chunks_zero  # no frame matched
    # 64 KiB frames cut into ~4 KiB pieces: the pieces at each frame's edges differ (the
    # 1 MiB frames of real repositories lose far less; docs/performance.md has the numbers)
    assert rb.stats.bytes_stored < 0.4 * ra.stats.bytes_stored
    assert restored_sha(repo, pa_.id, tmp_path) == sha(a)
    assert restored_sha(repo, pb.id, tmp_path) == sha(b)
    reader = PointReader(repo, repo.load_point(pb.id))
    assert reader.pread(100_000, 300_000) == b.read_bytes()[100_000:400_000]
    report = check_repository(Repository.open(repo.backend.location), read_data=True)
    assert report.ok, report.to_json()


@PIECE_VERSIONS
def test_prune_keeps_the_pieces_of_frames_still_referenced(tmp_path: Path, version: int) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, version=version)
    repo.config.pack_size = 128 * 1024  # many packs: some are repacked, some deleted
    body = files_blob(3, 768 * 1024)
    a = guest_image(tmp_path / "a.img", 0, body + random.Random(4).randbytes(200_000))
    b = guest_image(tmp_path / "b.img", 5, body)
    pa_, _ = backup(repo, a, name="a")
    pb, _ = backup(repo, b, name="b")  # its frames' pieces largely live in a's packs
    forget_ids(repo, [pa_.id])
    report = prune(repo, grace=timedelta(0))
    assert report.packs_deleted + report.packs_repacked > 0 and report.missing_blobs == 0
    fresh = Repository.open(repo.backend.location)
    assert restored_sha(fresh, pb.id, tmp_path) == sha(b)
    check = check_repository(fresh, read_data=True)
    assert check.ok, check.to_json()


def _recipe_locations(repo: Repository, point_id: str) -> list[tuple[bytes, object]]:
    table = repo.load_point(point_id).chunks[0]
    ids = dict.fromkeys(table.blob_id(i) for i in range(len(table)))
    return [(b, loc) for b in ids if (loc := repo.locate(b)) and loc.codec == CODEC_RECIPE]


@PIECE_VERSIONS
def test_a_forged_recipe_fails_restore_read_and_check(tmp_path: Path, version: int) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, version=version)
    img = guest_image(tmp_path / "a.img", 0, files_blob(5, 512 * 1024))
    point, _ = backup(repo, img)
    frame, loc = _recipe_locations(repo, point.id)[0]
    # well-formed, lengths honest, every listed piece authentic: one piece claimed all-zero
    path = Path(repo.backend.location) / pack_key(loc.pack_id)  # type: ignore[attr-defined]
    pack = bytearray(path.read_bytes())
    start, stored = loc.offset, loc.stored_length  # type: ignore[attr-defined]
    pieces = decode_recipe(pack[start : start + stored], FRAME, "test")
    k = next(k for k, (piece, _) in enumerate(pieces) if piece != ZERO_ID)
    struct.pack_into("<32s", pack, start + 8 + 36 * k, ZERO_ID)
    path.chmod(0o644)
    path.write_bytes(bytes(pack))

    fresh = Repository.open(repo.backend.location)
    with pytest.raises(DataCorrupt, match="hash check"):
        fresh.read_blob(frame)
    with pytest.raises(DataCorrupt, match="hash check"):
        restore_disk(fresh, fresh.load_point(point.id), 0, str(tmp_path / "out.img"))
    assert not (tmp_path / "out.img").exists()
    report = check_repository(Repository.open(repo.backend.location), read_data=True)
    assert "corrupt-chunk" in {p.kind for p in report.problems}  # and the pack's name fails
    assert {a["point"] for p in report.problems for a in p.affected} == {point.id}


@PIECE_VERSIONS
def test_an_encrypted_repository_stores_recipes_sealed(tmp_path: Path, version: int) -> None:
    repo = Repository.init(
        str(tmp_path / "repo"), image_chunk_size=FRAME, version=version, password="pw"
    )
    body = files_blob(7, 512 * 1024)
    a = guest_image(tmp_path / "a.img", 1, body)
    b = guest_image(tmp_path / "b.img", 6, body)
    _, ra = backup(repo, a, name="a")
    pb, rb = backup(repo, b, name="b")
    assert rb.stats.bytes_stored < 0.5 * ra.stats.bytes_stored  # pieces found across offsets
    fresh = Repository.open(repo.backend.location, password="pw")
    assert restored_sha(fresh, pb.id, tmp_path) == sha(b)
    assert check_repository(fresh, read_data=True).ok


def test_a_version_1_repository_reads_checks_and_backs_up_with_whole_frames(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo-v1"
    shutil.copytree(FIXTURE, root)
    expected = (FIXTURE.parent / "repo-v1.sha256").read_text().split()
    repo = Repository.open(str(root))
    assert repo.config.version == 1 and repo.config.image_cdc is None
    points = sorted(repo.list_points(), key=lambda p: p.time)
    shas = [restored_sha(repo, p.id, tmp_path) for p in points]
    assert shas == expected
    assert check_repository(repo, read_data=True).ok
    img = tmp_path / "more.img"
    img.write_bytes(files_blob(9, 200_000) + bytes(-200_000 % FRAME))
    point, result = backup(repo, img, name="new")
    assert result.stats.pieces_new == 0  # a version-1 repository keeps whole frames
    assert all(
        (loc := repo.locate(b)) is None or loc.codec != CODEC_RECIPE
        for b in (point.chunks[0].blob_id(i) for i in range(len(point.chunks[0])))
    )
    fresh = Repository.open(str(root))
    assert restored_sha(fresh, point.id, tmp_path) == hashlib.sha256(img.read_bytes()).hexdigest()
    assert check_repository(fresh, read_data=True).ok
    assert json.loads((root / "config").read_text())["version"] == 1


def test_config_versions() -> None:
    v5 = RepoConfig.new()
    assert v5.version == 5 and v5.units and v5.recipe_ids
    assert RepoConfig.decode(v5.encode()).version == 5
    v4 = RepoConfig.new(version=4)
    assert v4.version == 4 and v4.units and not v4.recipe_ids
    assert RepoConfig.decode(v4.encode()).version == 4 and v4.image_cdc == v5.image_cdc
    v3 = RepoConfig.new(version=3)
    assert v3.version == 3 and not v3.units and v3.image_cdc == v4.image_cdc == {
        "min": 16384, "avg": 65536, "max": 262144, "lookback": 65536
    }
    assert RepoConfig.new(version=2).version == 2
    with pytest.raises(ValueError):
        RepoConfig.new(image_cdc=None, version=4)
    assert RepoConfig.decode(v3.encode()).image_cdc == v3.image_cdc
    v2 = RepoConfig.new(image_cdc={"min": 16384, "avg": 65536, "max": 262144, "lookback": 0})
    assert v2.version == 2 and v2.image_cdc == {"min": 16384, "avg": 65536, "max": 262144}
    assert RepoConfig.decode(v2.encode()).image_cdc == v2.image_cdc
    for version, cdc in ((2, v3.image_cdc), (3, v2.image_cdc), (4, v2.image_cdc),
                         (5, v2.image_cdc)):
        forged_v = json.loads(v3.encode())
        forged_v["version"], forged_v["image_cdc"] = version, cdc
        with pytest.raises(FormatError):
            RepoConfig.decode(json.dumps(forged_v).encode())
    v1 = RepoConfig.new(image_cdc=None)
    assert v1.version == 1 and RepoConfig.decode(v1.encode()).image_cdc is None
    forged = json.loads(v1.encode())
    forged["image_cdc"] = v2.image_cdc
    with pytest.raises(FormatError):
        RepoConfig.decode(json.dumps(forged).encode())
    bad = json.loads(v2.encode())
    bad["image_cdc"] = {"min": 1, "avg": 2, "max": 3}
    with pytest.raises(FormatError):
        RepoConfig.decode(json.dumps(bad).encode())


def test_version_2_packs_are_named_by_their_contents_table(tmp_path: Path) -> None:
    from blake3 import blake3

    from vmkeep.storage.pack import MAGIC2, pack_digest

    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, version=3)
    img = guest_image(tmp_path / "a.img", 0, files_blob(11, 256 * 1024))
    point, _ = backup(repo, img)
    root = Path(repo.backend.location)
    key, _size = max(repo.backend.list("packs"), key=lambda ks: ks[1])
    data = (root / key).read_bytes()
    trailer_len = int.from_bytes(data[-12:-8], "little")
    assert data.startswith(MAGIC2)
    assert key.endswith(blake3(MAGIC2 + data[-12 - trailer_len :]).hexdigest())
    assert pack_digest(data).hex() == key.rsplit("/", 1)[-1]
    # a flipped payload byte keeps the name but fails the chunk's keyed id (check --read-data)
    bad = bytearray(data)
    bad[20] ^= 0x01
    (root / key).chmod(0o644)
    (root / key).write_bytes(bytes(bad))
    assert pack_digest(bytes(bad)) == pack_digest(data)
    report = check_repository(Repository.open(str(root)), read_data=True)
    assert "corrupt-chunk" in {p.kind for p in report.problems}
    assert {a["point"] for p in report.problems for a in p.affected} == {point.id}
    # a flipped trailer byte changes the name
    bad = bytearray(data)
    bad[-12 - trailer_len + 40] ^= 0x01
    assert pack_digest(bytes(bad)) != pack_digest(data)


def test_the_level_policy_uses_spare_cpu_only_while_reads_dominate() -> None:
    from vmkeep.storage.disk_backup import LevelPolicy

    policy = LevelPolicy(base=1, high=3, window=4)
    for _ in range(4):
        policy.observe(read_s=0.010, work_s=0.002)  # waiting for data: the CPU has room
    assert policy.level == 3
    for _ in range(3):
        policy.observe(read_s=0.0001, work_s=0.004)
    assert policy.level == 3  # decided per window, not per chunk
    policy.observe(read_s=0.0001, work_s=0.004)
    assert policy.level == 1  # CPU-bound: the repository's own level, as before
    assert LevelPolicy(base=5, high=3).high == 5  # never weaker than the repository's level


@PIECE_VERSIONS
def test_the_levels_used_are_recorded_per_disk(tmp_path: Path, version: int) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, version=version)
    img = guest_image(tmp_path / "a.img", 0, files_blob(13, 256 * 1024))
    point, result = backup(repo, img)
    levels = repo.load_point(point.id).disks[0].extra["zstd_levels"]
    assert set(levels) <= {"1", "3"}
    whole = result.stats.chunks_new - len(_recipe_locations(repo, point.id))
    if version == 3:  # each piece compressed on its own
        assert sum(levels.values()) == result.stats.pieces_new + whole
    else:  # a frame's new pieces compressed together: one payload per unit
        assert result.stats.units_new == len(_recipe_locations(repo, point.id)) == 4
        assert sum(levels.values()) == result.stats.units_new + whole


def test_a_lost_recipe_pack_is_reported_healed_by_the_next_backup_and_prune_carries_on(
    tmp_path: Path,
) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME)
    img = guest_image(tmp_path / "a.img", 0, files_blob(17, 384 * 1024))
    first, _ = backup(repo, img)
    (_, loc), *_ = _recipe_locations(repo, first.id)
    (Path(repo.backend.location) / pack_key(loc.pack_id)).unlink()  # type: ignore[attr-defined]
    repo.close()
    damaged = check_repository(Repository.open(str(tmp_path / "repo")))
    assert "missing-pack" in {p.kind for p in damaged.problems}
    assert {a["point"] for p in damaged.problems for a in p.affected} == {first.id}

    healer = Repository.open(str(tmp_path / "repo"))
    second, _ = backup(healer, img)  # stores the frames' recipes again
    healer.close()
    report = prune(Repository.open(str(tmp_path / "repo")), grace=timedelta(0))
    assert report.missing_blobs == 0
    fresh = Repository.open(str(tmp_path / "repo"))
    assert restored_sha(fresh, second.id, tmp_path) == sha(img)
    assert restored_sha(fresh, first.id, tmp_path) == sha(img)
    assert check_repository(fresh, read_data=True).ok


@PIECE_VERSIONS
def test_zero_pieces_inside_a_frame_are_listed_not_stored(tmp_path: Path, version: int) -> None:
    """A zero run inside a new frame becomes ``ZERO_ID`` pieces; a piece that is zero but for
    its last byte is stored (the zero test compares every byte, not a sample)."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, version=version)
    frame = files_blob(5, 16 * 1024) + bytes(32 * 1024) + files_blob(6, 16 * 1024)
    tail = bytearray(FRAME)
    tail[-1] = 1  # zero but for its very last byte
    image = tmp_path / "z.img"
    image.write_bytes(frame + bytes(tail))
    point, _ = backup(repo, image, name="z")
    recipes = _recipe_locations(repo, point.id)
    assert recipes
    listed = []
    for _, loc in recipes:
        pack = (Path(repo.backend.location) / pack_key(loc.pack_id)).read_bytes()  # type: ignore[attr-defined]
        start, stored = loc.offset, loc.stored_length  # type: ignore[attr-defined]
        listed += decode_recipe(pack[start : start + stored], FRAME, "test")
    assert any(p == ZERO_ID for p, _ in listed)
    assert restored_sha(repo, point.id, tmp_path) == sha(image)
    report = check_repository(Repository.open(repo.backend.location), read_data=True)
    assert report.ok, report.to_json()
