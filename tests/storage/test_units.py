"""Compression units (repository version 4): a frame's new pieces compressed together as one
zstd frame, each piece still a blob with its own id and index entry.

Unit level: the ``VMKPACK3`` trailer and the version-2 index carry the in-unit offset and the
unit's length, bounds-checked; older packs and index files keep reading.  Repository level: a
version-4 repository backs up, restores bit-identically (whole disk and random reads), forgets,
prunes (a unit kept whole while any piece is used, repacked whole) and checks ``--read-data``;
a damaged unit is a typed error naming its pieces, recorded and healed by the next backup;
encrypted units are sealed once; repositories of versions 1–3 keep their own formats.
"""

from __future__ import annotations

import os
import random
import shutil
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.storage.storage_helpers import backup, restored_sha, sha
from tests.storage.test_image_cdc import FIXTURE, FRAME, files_blob, guest_image
from vmkeep.storage.checker import check_repository
from vmkeep.storage.codec import CODEC_RAW, CODEC_RECIPE, CODEC_UNIT, CODEC_ZSTD, BlobCodec
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.errors import DataCorrupt, FormatError, UnitCorrupt
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.heal import load_damage
from vmkeep.storage.index import (
    BlobLocation,
    MasterIndex,
    decode_index,
    encode_index,
    for_version,
    index_schema,
)
from vmkeep.storage.pack import (
    ENTRY3,
    MAGIC,
    MAGIC2,
    MAGIC3,
    PackBuilder,
    PackEntry,
    pack_digest,
    pack_key,
    parse_pack,
)
from vmkeep.storage.prune import prune
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import Repository


def _unit_pack(cipher: object = None) -> tuple[bytes, bytes, list[PackEntry], bytes]:
    codec = BlobCodec(1)
    pieces = [b"alpha " * 700, b"beta " * 900, b"gamma " * 500]
    unit = b"".join(pieces)
    payload, _ = codec.encode_unit(pieces)
    assert payload is not None and len(payload) < len(unit) / 10
    builder = PackBuilder(3)
    builder.add(b"w" * 32, CODEC_ZSTD, codec.encode(b"whole " * 999)[1], 5994, level=1)
    members, pos = [], 0
    for i, piece in enumerate(pieces):
        members.append((bytes([i]) * 32, pos, len(piece)))
        pos += len(piece)
    builder.add_unit(members, payload, len(unit), level=3)
    pack_id, data, entries = builder.finish()
    return pack_id, data, entries, unit


def test_a_version_3_pack_lists_every_piece_of_a_unit_with_its_offset_in_the_unit() -> None:
    pack_id, data, entries, unit = _unit_pack()
    assert data.startswith(MAGIC3) and data.endswith(b"VMKPEND3")
    assert pack_digest(data) == pack_id  # named by its contents table, like VMKPACK2
    parsed = parse_pack(data, "p")
    assert parsed == entries and len(parsed) == 4
    pieces = [e for e in parsed if e.codec == CODEC_UNIT]
    assert len({(e.offset, e.stored_length) for e in pieces}) == 1  # one payload
    assert [e.level for e in pieces] == [3, 3, 3] and parsed[0].unit_length == 0
    decoded = BlobCodec().decode_unit(
        data[pieces[0].offset : pieces[0].offset + pieces[0].stored_length], len(unit), "p"
    )
    assert decoded == unit
    assert [decoded[e.unit_offset : e.unit_offset + e.raw_length][:5] for e in pieces] == [
        b"alpha", b"beta ", b"gamma"
    ]
    assert len(data) - 12 - pieces[0].offset - pieces[0].stored_length == 4 * ENTRY3.size


def test_pack_trailers_with_pieces_outside_their_unit_or_units_in_old_packs_are_refused() -> None:
    _pack_id, data, _entries, unit = _unit_pack()
    trailer_at = len(data) - 12 - 4 * ENTRY3.size
    bad = bytearray(data)
    # the last piece claims to run past the unit's end: unit_offset field of entry 3
    at = trailer_at + 3 * ENTRY3.size + 50
    bad[at : at + 4] = (len(unit) - 10).to_bytes(4, "little")
    with pytest.raises(FormatError, match="outside its unit"):
        parse_pack(bytes(bad), "p")
    with pytest.raises(FormatError, match="disagree"):
        parse_pack(MAGIC2 + data[len(MAGIC3) :], "p")
    with pytest.raises(ValueError):
        PackBuilder(2).add_unit([(b"x" * 32, 0, 1)], b"?", 1)
    with pytest.raises(ValueError):
        PackBuilder(3).add(b"x" * 32, CODEC_UNIT, b"?", 1)
    old = PackBuilder(1)
    old.add(b"y" * 32, CODEC_RAW, b"raw", 3)
    _id, old_data, old_entries = old.finish()
    assert old_data.startswith(MAGIC) and parse_pack(old_data, "old") == old_entries


def test_index_version_2_carries_units_and_version_1_files_keep_reading() -> None:
    pack_id, _data, entries, _unit = _unit_pack()
    rows = [(pack_id, e) for e in entries]
    key, data = encode_index(rows, version=2)
    table = decode_index(data, key)
    assert table.schema.remove_metadata().equals(index_schema().remove_metadata())
    index = MasterIndex()
    index.add_table(table)
    piece = next(e for e in entries if e.codec == CODEC_UNIT and e.unit_offset)
    assert index.get(piece.blob_id) == BlobLocation(
        pack_id, piece.offset, piece.stored_length, piece.raw_length, CODEC_UNIT,
        piece.unit_offset, piece.unit_length,
    )
    with pytest.raises(FormatError):  # a version-1 index cannot name a piece in a unit
        encode_index(rows, version=1)
    whole = [r for r in rows if r[1].codec != CODEC_UNIT]
    key1, data1 = encode_index(whole, version=1)
    meta = pq.read_schema(pa.BufferReader(data1)).metadata[b"vmkeep"]
    assert b'"version": 1' in meta and len(pq.read_schema(pa.BufferReader(data1))) == 6
    old = decode_index(data1, key1)  # upgraded: unit columns of zeros
    assert old.column("unit_length").to_pylist() == [0]
    forged = for_version(table, 2).to_pylist()
    forged[-1]["unit_offset"] = forged[-1]["unit_length"]  # the piece past its unit's end
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(forged, schema=index_schema(2)), sink)
    with pytest.raises(FormatError, match="outside its unit"):
        decode_index(sink.getvalue().to_pybytes(), "forged")


def _units_of(repo: Repository) -> dict[tuple[bytes, int], list[bytes]]:
    """(pack, payload offset) -> the piece ids every unit of the repository's index lists."""
    out: dict[tuple[bytes, int], list[bytes]] = {}
    for blob_id, loc in repo.index.items():
        if loc.codec == CODEC_UNIT:
            out.setdefault((loc.pack_id, loc.offset), []).append(blob_id)
    return out


@pytest.mark.parametrize("version", [4, 5])
def test_a_version_4_repository_backs_up_restores_forgets_prunes_and_checks(
    tmp_path: Path, version: int
) -> None:
    """Version 5 (recipe ids) stores units exactly as version 4."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, version=version)
    assert repo.config.version == version and repo.pack_version == 3 and repo.index_version == 2
    repo.config.pack_size = 96 * 1024  # several packs: some deleted, some repacked
    body = files_blob(21, 768 * 1024)
    a = guest_image(tmp_path / "a.img", 0, body + random.Random(22).randbytes(100_000))
    b = guest_image(tmp_path / "b.img", 7, body + files_blob(23, 200_000))
    pa_, ra = backup(repo, a, name="a")
    pb, rb = backup(repo, b, name="b")
    assert ra.stats.units_new > 0 and rb.stats.units_new > 0
    units = _units_of(repo)
    assert units and all(len(p) >= 2 for p in units.values())
    root = Path(repo.backend.location)
    for key, _size in repo.backend.list("packs"):
        assert (root / key).read_bytes().startswith(MAGIC3)
    for key, _size in repo.backend.list("index"):
        meta = pq.read_schema(root / key).metadata[b"vmkeep"]
        assert b'"version": 2' in meta

    for point, img in ((pa_, a), (pb, b)):
        assert restored_sha(repo, point.id, tmp_path) == sha(img)
    reader = PointReader(repo, repo.load_point(pb.id))
    data = b.read_bytes()
    for offset, length in ((0, 10), (70_000, 150_000), (len(data) - 5000, 5000)):
        assert reader.pread(offset, length) == data[offset : offset + length]
    assert check_repository(Repository.open(str(root)), read_data=True).ok

    forget_ids(repo, [pa_.id])
    report = prune(Repository.open(str(root)), grace=timedelta(0))
    assert report.packs_deleted + report.packs_repacked > 0
    fresh = Repository.open(str(root))
    assert restored_sha(fresh, pb.id, tmp_path) == sha(b)
    checked = check_repository(fresh, read_data=True)
    assert checked.ok, checked.to_json()
    # every unit still indexed is whole: prune keeps and repacks units with all their pieces
    after = {frozenset(p) for p in _units_of(fresh).values()}
    assert after and after <= {frozenset(p) for p in units.values()}


def test_prune_keeps_a_unit_whole_while_one_of_its_pieces_is_used(tmp_path: Path) -> None:
    """Image b shares only part of each of a's frames: a's units stay (whole) after a is
    forgotten, although most of their pieces are referenced by nothing."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME)
    text = files_blob(31, 512 * 1024)
    a = guest_image(tmp_path / "a.img", 0, text)
    b_data = bytearray(a.read_bytes())
    rng = random.Random(32)
    for f in range(0, len(b_data), FRAME):  # keep the first 16 KiB of every frame of a
        b_data[f + 16384 : f + FRAME] = files_blob(rng.randrange(1 << 30), FRAME - 16384)
    b = tmp_path / "b.img"
    b.write_bytes(bytes(b_data))
    pa_, _ = backup(repo, a, name="a")
    pb, _ = backup(repo, b, name="b")
    before = _units_of(repo)
    forget_ids(repo, [pa_.id])
    prune(Repository.open(repo.backend.location), grace=timedelta(0), repack_below=0.9)
    fresh = Repository.open(repo.backend.location)
    kept = {tuple(sorted(p)) for p in _units_of(fresh).values()}
    a_units = [tuple(sorted(p)) for p in before.values()]
    used_a_units = [u for u in a_units if u in kept]
    assert used_a_units, "a's units with a piece b uses were dropped"
    assert restored_sha(fresh, pb.id, tmp_path) == sha(b)
    assert check_repository(fresh, read_data=True).ok


def _corrupt_a_unit(repo: Repository) -> tuple[list[bytes], BlobLocation]:
    (pack_id, offset), pieces = max(_units_of(repo).items(), key=lambda kv: len(kv[1]))
    loc = repo.index.get(pieces[0])
    assert loc is not None
    path = Path(repo.backend.location) / pack_key(pack_id)
    data = bytearray(path.read_bytes())
    for at in range(offset + 8, offset + loc.stored_length - 4, 97):  # inside the zstd frame
        data[at] ^= 0x5A
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return pieces, loc


def test_a_damaged_unit_names_its_pieces_and_the_next_backup_heals_them(
    tmp_path: Path,
) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME)
    img = guest_image(tmp_path / "a.img", 0, files_blob(41, 512 * 1024))
    point, _ = backup(repo, img)
    pieces, _loc = _corrupt_a_unit(repo)

    fresh = Repository.open(repo.backend.location)
    with pytest.raises(DataCorrupt) as raised:
        fresh.read_blob(pieces[0])
    assert isinstance(raised.value, UnitCorrupt) and pieces[0] in raised.value.blobs
    with pytest.raises(UnitCorrupt) as restoring:
        restore_disk(fresh, fresh.load_point(point.id), 0, str(tmp_path / "out.img"))
    assert set(restoring.value.blobs) <= set(pieces) and restoring.value.blobs
    assert not (tmp_path / "out.img").exists()

    report = check_repository(Repository.open(repo.backend.location), read_data=True)
    assert not report.ok
    damaged = {
        bytes.fromhex(a["chunk"])
        for p in report.problems
        if p.kind == "corrupt-chunk"
        for a in p.affected
    }
    assert set(pieces) <= damaged  # every piece of the unit, and the frames listing them
    assert any("compression unit" in p.detail for p in report.problems)
    assert {a["point"] for p in report.problems for a in p.affected} == {point.id}
    recorded = {d.blob for r in load_damage(repo.backend) for d in r.entries}
    assert set(pieces) <= recorded

    again = Repository.open(repo.backend.location)  # reads the damage records: re-stores them
    healed_point, result = backup(again, img, name="healed")
    assert result.stats.pieces_new >= len(pieces)
    assert restored_sha(Repository.open(repo.backend.location), healed_point.id, tmp_path) == (
        sha(img)
    )
    healed = check_repository(Repository.open(repo.backend.location), read_data=True)
    assert set(pieces) <= {bytes.fromhex(h["chunk"]) for h in healed.healed}


@pytest.mark.parametrize("version", [4, 5])
def test_an_encrypted_version_4_repository_seals_each_unit_once(
    tmp_path: Path, version: int
) -> None:
    repo = Repository.init(
        str(tmp_path / "repo"), image_chunk_size=FRAME, password="pw", version=version
    )
    assert repo.config.version == version
    img = guest_image(tmp_path / "a.img", 3, files_blob(51, 512 * 1024))
    point, result = backup(repo, img)
    assert result.stats.units_new > 0
    fresh = Repository.open(repo.backend.location, password="pw")
    assert restored_sha(fresh, point.id, tmp_path) == sha(img)
    (pack_id, offset), pieces = next(iter(_units_of(fresh).items()))
    loc = fresh.index.get(pieces[0])
    assert loc is not None and fresh.cipher is not None
    stored = fresh.backend.get(pack_key(pack_id), offset, loc.stored_length)
    unit = fresh.codec.decode_unit(
        fresh.cipher.open_unit(loc.unit_length, stored, "t"), loc.unit_length, "t"
    )
    assert len(unit) == loc.unit_length
    with pytest.raises(DataCorrupt):  # sealed as a unit, not as any one blob
        fresh.cipher.open_blob(pieces[0], stored, "t")
    with pytest.raises(DataCorrupt):  # bound to its length
        fresh.cipher.open_unit(loc.unit_length + 1, stored, "t")
    assert check_repository(fresh, read_data=True).ok
    _corrupt_a_unit(fresh)
    report = check_repository(Repository.open(repo.backend.location, password="pw"),
                              read_data=True)
    assert "corrupt-chunk" in {p.kind for p in report.problems}


@pytest.mark.parametrize("version", [2, 3])
def test_versions_2_and_3_keep_their_formats_and_still_back_up_restore_prune_and_check(
    tmp_path: Path, version: int
) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, version=version)
    repo.config.pack_size = 96 * 1024
    body = files_blob(61, 512 * 1024)
    a = guest_image(tmp_path / "a.img", 0, body)
    b = guest_image(tmp_path / "b.img", 5, body + files_blob(62, 100_000))
    pa_, _ = backup(repo, a, name="a")
    pb, result = backup(repo, b, name="b")
    assert result.stats.units_new == 0 and result.stats.pieces_new > 0
    root = Path(repo.backend.location)
    assert all((root / k).read_bytes().startswith(MAGIC2) for k, _ in repo.backend.list("packs"))
    assert all(b'"version": 1' in pq.read_schema(root / k).metadata[b"vmkeep"]
               for k, _ in repo.backend.list("index"))
    forget_ids(repo, [pa_.id])
    prune(Repository.open(str(root)), grace=timedelta(0))
    fresh = Repository.open(str(root))
    assert fresh.config.version == version
    assert restored_sha(fresh, pb.id, tmp_path) == sha(b)
    assert check_repository(fresh, read_data=True).ok
    assert all(b'"version": 1' in pq.read_schema(root / k).metadata[b"vmkeep"]
               for k, _ in fresh.backend.list("index"))  # prune's too
    assert not _units_of(fresh)


def test_the_version_1_fixture_prunes_with_this_version(tmp_path: Path) -> None:
    root = tmp_path / "repo-v1"
    shutil.copytree(FIXTURE, root)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    repo = Repository.open(str(root))
    assert repo.config.version == 1
    points = [p.id for p in repo.list_points()]
    prune(repo, grace=timedelta(0))
    fresh = Repository.open(str(root))
    assert [p.id for p in fresh.list_points()] == points
    assert check_repository(fresh, read_data=True).ok


def test_stats_count_each_unit_once(tmp_path: Path) -> None:
    from vmkeep.storage.stats import repository_stats

    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME)
    a = guest_image(tmp_path / "a.img", 0, files_blob(81, 512 * 1024))
    b = guest_image(tmp_path / "b.img", 0, random.Random(82).randbytes(256 * 1024))  # no units
    backup(repo, a, name="a")
    backup(repo, b, name="b")
    stats = repository_stats(Repository.open(repo.backend.location))
    assert 0 < stats.referenced_bytes <= stats.pack_bytes
    assert stats.pack_bytes - stats.referenced_bytes < 0.1 * stats.pack_bytes  # overhead only
    assert sum(p["unique_bytes"] for p in stats.per_point) == stats.referenced_bytes


def test_a_frame_starting_incompressible_still_forms_a_unit(tmp_path: Path) -> None:
    """No probe of a unit's first bytes: a 1 MiB frame whose first 64 KiB are random and the
    rest text compresses as one unit (a probe would have stored all of it raw); a frame that
    is random throughout stores its pieces on their own, raw."""
    repo = Repository.init(str(tmp_path / "repo"))
    rng = random.Random(91)
    text = files_blob(92, (1 << 20) - 65536)
    img = tmp_path / "a.img"
    img.write_bytes(rng.randbytes(65536) + text + rng.randbytes(1 << 20))
    point, result = backup(repo, img)
    assert result.stats.units_new == 1
    assert result.stats.bytes_stored < (1 << 20) + 65536 + len(text) // 2
    assert restored_sha(repo, point.id, tmp_path) == sha(img)
    codecs = {loc.codec for _, loc in repo.index.items()}
    assert CODEC_UNIT in codecs and CODEC_RAW in codecs


def test_an_incompressible_unit_is_not_compressed_again_piece_by_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame zstd cannot shrink at all stores its pieces raw after the one try as a unit (no
    second zstd pass per piece); a frame whose unit saves under 3 % but something still tries
    each piece, and its compressible piece is stored compressed."""
    tries: list[int] = []
    encode = BlobCodec.encode

    def counted(self: BlobCodec, raw: bytes | memoryview, level: int | None = None) -> object:
        tries.append(memoryview(raw).nbytes)
        return encode(self, raw, level)

    monkeypatch.setattr(BlobCodec, "encode", counted)
    rng = random.Random(93)
    repo = Repository.init(str(tmp_path / "repo"))
    img = tmp_path / "random.img"
    img.write_bytes(rng.randbytes(1 << 20))
    point, result = backup(repo, img)
    assert result.stats.pieces_new > 1 and result.stats.units_new == 0
    assert tries == []
    assert {loc.codec for _, loc in repo.index.items()} == {CODEC_RAW, CODEC_RECIPE}
    assert restored_sha(repo, point.id, tmp_path) == sha(img)

    repo = Repository.init(str(tmp_path / "repo2"))
    mixed = tmp_path / "mixed.img"
    text = files_blob(94, 40 * 1024)
    tail = rng.randbytes((1 << 20) - 600 * 1024 - len(text))
    mixed.write_bytes(rng.randbytes(600 * 1024) + text + tail)
    point, result = backup(repo, mixed)
    assert result.stats.units_new == 0 and len(tries) == result.stats.pieces_new > 1
    assert CODEC_ZSTD in {loc.codec for _, loc in repo.index.items()}
    assert restored_sha(repo, point.id, tmp_path) == sha(mixed)
    assert check_repository(Repository.open(repo.backend.location), read_data=True).ok
