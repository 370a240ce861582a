"""Repository version 5: a frame stored as a recipe is named by the keyed hash of its recipe
(docs/format.md, "Why recipe ids"); versions 2-4 keep naming frames by their bytes."""

from __future__ import annotations

import struct
from datetime import timedelta
from pathlib import Path

import pytest
from blake3 import blake3

from tests.storage.storage_helpers import backup, restored_sha, sha
from tests.storage.test_image_cdc import FRAME, files_blob, guest_image
from vmkeep.storage.checker import check_repository
from vmkeep.storage.codec import (
    CODEC_RECIPE,
    RECIPE_ID_CONTEXT,
    ZERO_ID,
    ChunkHasher,
    decode_recipe,
)
from vmkeep.storage.errors import DataCorrupt
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.pack import pack_key
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository


def _recipes(repo: Repository, point_id: str) -> list[tuple[bytes, bytes, bytes]]:
    """``(frame id, recipe payload, frame bytes)`` of the point's recipe frames."""
    table = repo.load_point(point_id).chunks[0]
    out = []
    for i in range(len(table)):
        blob_id = table.blob_id(i)
        loc = repo.locate(blob_id)
        if loc is None or loc.codec != CODEC_RECIPE:
            continue
        stored = repo.backend.get(f"packs/{loc.pack_id.hex()[:2]}/{loc.pack_id.hex()}",
                                  loc.offset, loc.stored_length)
        payload = stored if repo.cipher is None else repo.cipher.open_blob(blob_id, stored, "t")
        out.append((blob_id, bytes(payload), bytes(repo.read_blob(blob_id))))
    return out


@pytest.mark.parametrize("password", [None, "pw"])
def test_a_version_5_frame_is_named_by_its_recipe(tmp_path: Path, password: str | None) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, password=password)
    assert repo.config.version == 5
    img = guest_image(tmp_path / "a.img", 3, files_blob(11, 512 * 1024))
    point, _ = backup(repo, img)
    recipes = _recipes(repo, point.id)
    assert recipes
    key = repo.hasher.key
    recipe_key = blake3(key, derive_key_context=RECIPE_ID_CONTEXT).digest()
    assert recipe_key != key
    for frame_id, payload, frame in recipes:
        assert frame_id == blake3(payload, key=recipe_key).digest()  # the spec's words
        assert frame_id == ChunkHasher(key).recipe_id(payload)
        assert frame_id != ChunkHasher(key).chunk_id(frame)
    assert restored_sha(repo, point.id, tmp_path) == sha(img)
    assert check_repository(repo, read_data=True).ok


def test_a_version_4_repository_keeps_naming_frames_by_their_bytes(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME, version=4)
    img = guest_image(tmp_path / "a.img", 3, files_blob(11, 512 * 1024))
    point, _ = backup(repo, img)
    recipes = _recipes(Repository.open(repo.backend.location), point.id)
    assert recipes
    for frame_id, _payload, frame in recipes:
        assert frame_id == repo.hasher.chunk_id(frame)
    fresh = Repository.open(repo.backend.location)
    assert fresh.config.version == 4
    assert restored_sha(fresh, point.id, tmp_path) == sha(img)
    assert check_repository(fresh, read_data=True).ok


def test_a_clone_without_a_parent_stores_nothing_new(tmp_path: Path) -> None:
    """The same disk backed up under another name (no previous point to compare with): every
    frame is cut and hashed, and found by its recipe id — nothing is stored again."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME)
    img = guest_image(tmp_path / "a.img", 5, files_blob(13, 768 * 1024))
    backup(repo, img, name="template")
    clone, result = backup(repo, img, name="clone")
    assert result.stats.bytes_stored == 0 and result.stats.pieces_new == 0
    assert restored_sha(repo, clone.id, tmp_path) == sha(img)


def _forge_a_recipe(repo: Repository, point_id: str) -> bytes:
    """Make one of the point's recipes list another of its stored pieces in place of its first
    (in place, in an unencrypted repository: every id listed is still an authentic piece).
    Returns the forged frame's id."""
    table = repo.load_point(point_id).chunks[0]
    for i in range(len(table)):
        frame = table.blob_id(i)
        loc = repo.locate(frame)
        if loc is None or loc.codec != CODEC_RECIPE:
            continue
        path = Path(repo.backend.location) / pack_key(loc.pack_id)  # type: ignore[attr-defined]
        pack = bytearray(path.read_bytes())
        pieces = decode_recipe(pack[loc.offset : loc.offset + loc.stored_length], FRAME, "t")
        stored = [(k, p) for k, (p, _) in enumerate(pieces) if p != ZERO_ID]
        if len(stored) < 2 or stored[0][1] == stored[1][1]:
            continue
        (a, _), (_, id_b) = stored[0], stored[1]
        struct.pack_into("<32s", pack, loc.offset + 8 + 36 * a, id_b)  # a lists b's piece
        path.chmod(0o644)
        path.write_bytes(bytes(pack))
        return frame
    raise AssertionError("no recipe with two stored pieces")


def test_prune_refuses_to_mark_from_a_forged_recipe(tmp_path: Path) -> None:
    """A version-5 recipe is checked against its id wherever it is read, prune's mark phase
    too: marking from a forged recipe could keep the wrong pieces and delete the real ones, so
    prune stops and deletes nothing (docs/format.md, "Why recipe ids")."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME)
    img = guest_image(tmp_path / "a.img", 2, files_blob(17, 512 * 1024))
    point, _ = backup(repo, img)
    old = guest_image(tmp_path / "old.img", 9, files_blob(19, 256 * 1024))
    gone, _ = backup(repo, old, name="old")
    forget_ids(repo, [gone.id])  # something for prune to delete
    _forge_a_recipe(repo, point.id)
    packs_before = sorted(p.name for p in Path(repo.backend.location, "packs").rglob("*"))
    fresh = Repository.open(repo.backend.location)
    with pytest.raises(DataCorrupt, match="hash check"):
        prune(fresh, grace=timedelta(0))
    assert sorted(p.name for p in Path(repo.backend.location, "packs").rglob("*")) == packs_before


def test_check_without_read_data_reports_a_forged_recipe(tmp_path: Path) -> None:
    """check reads every referenced recipe to map pieces to frames; in version 5 it checks each
    against its id on the way, so a forged one is a corrupt chunk even without --read-data."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME)
    img = guest_image(tmp_path / "a.img", 2, files_blob(23, 512 * 1024))
    point, _ = backup(repo, img)
    frame = _forge_a_recipe(repo, point.id)
    report = check_repository(Repository.open(repo.backend.location))
    bad = [p for p in report.problems if p.kind == "corrupt-chunk"]
    assert bad and "hash check" in bad[0].detail
    assert {a["chunk"] for p in bad for a in p.affected} == {frame.hex()}
    assert {a["point"] for p in bad for a in p.affected} == {point.id}
