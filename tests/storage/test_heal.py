"""Heal: chunks ``check --read-data`` found corrupt or missing are stored again by the next backup
of the same data; ``check`` then reports the affected points healed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, restored_sha, sha, write_image
from vmkeep.storage.checker import check_repository
from vmkeep.storage.pack import pack_key
from vmkeep.storage.repository import Repository


@pytest.mark.parametrize("cdc", [False, True], ids=["whole-frames", "recipes"])
def test_the_next_backup_heals_what_check_found_damaged(cdc: bool, tmp_path: Path) -> None:
    repo = Repository.init(
        str(tmp_path / "repo"), image_chunk_size=64 * 1024, **({} if cdc else {"image_cdc": None})
    )
    repo.config.pack_size = 256 * 1024
    img = write_image(tmp_path / "a.img", size=2 << 20, seed=8)
    first, _ = backup(repo, img)
    root = Path(repo.backend.location)
    index = repo.load_index()
    table = first.chunks[0]
    ids = (table.blob_id(i) for i in range(len(table)))
    chunks = [b for b in dict.fromkeys(ids) if b in index]
    if cdc:  # damage pieces (in the data packs), not recipes
        chunks = [p for b in chunks for p in repo.recipe_pieces(b) or [b]]
    # one chunk corrupted in place, and a whole pack (holding another chunk) lost
    bad = index.get(chunks[0])
    assert bad is not None
    path = root / pack_key(bad.pack_id)
    data = bytearray(path.read_bytes())
    data[bad.offset + bad.stored_length // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    lost = next(
        index.get(b) for b in chunks if index.get(b).pack_id != bad.pack_id  # type: ignore[union-attr]
    )
    assert lost is not None
    (root / pack_key(lost.pack_id)).unlink()
    repo.close()

    damaged = check_repository(Repository.open(str(root)), read_data=True)
    kinds = {p.kind for p in damaged.problems}
    assert not damaged.ok and {"corrupt-chunk", "missing-pack"} <= kinds, damaged.to_json()
    assert list(Repository.open(str(root)).backend.list("damaged"))

    healer = Repository.open(str(root))
    second, _ = backup(healer, img)  # reads the same data: stores the damaged chunks again
    healer.close()

    after = check_repository(Repository.open(str(root)), read_data=True)
    assert after.ok, after.to_json()
    healed = {h["chunk"]: h for h in after.healed}
    assert chunks[0].hex() in healed and healed[chunks[0].hex()]["was"] == "corrupt-chunk"
    assert first.id in healed[chunks[0].hex()]["points"]
    assert any(h["was"] == "missing-pack" for h in after.healed)
    fresh = Repository.open(str(root))
    assert restored_sha(fresh, first.id, tmp_path) == sha(img)
    assert restored_sha(fresh, second.id, tmp_path) == sha(img)
    fresh.close()
    again = check_repository(Repository.open(str(root)), read_data=True)
    assert again.ok and again.healed == []  # reported once
    for _ in range(3):  # the damaged copies stay out of every index load, whatever the order
        reader = Repository.open(str(root))
        assert restored_sha(reader, first.id, tmp_path) == sha(img)
        reader.close()
