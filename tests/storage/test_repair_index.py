"""``repair index``: the index rebuilt from the packs' trailers — lost, unreadable and wrong index
files; packs prune unlisted stay out; a pack whose trailer is unreadable keeps its old index file;
the CLI's exit codes and summary."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, restored_sha, sha
from tests.support.run_cli import VMKEEP, cli_env
from vmkeep.storage import gc
from vmkeep.storage.checker import check_repository
from vmkeep.storage.errors import IndexUnreadable, RepositoryLocked
from vmkeep.storage.index import encode_index
from vmkeep.storage.locks import PRUNE
from vmkeep.storage.pack import pack_id_from_key, read_trailer
from vmkeep.storage.repair import repair_index
from vmkeep.storage.repository import Repository


def _index_files(repo: Repository) -> list[str]:
    return sorted(k for k, _ in repo.backend.list("index"))


def _reopen(repo: Repository) -> Repository:
    return Repository.open(repo.backend.location)


def test_lost_index_files_are_rebuilt_from_the_packs(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    point, _ = backup(repo, image)
    for key in _index_files(repo):
        repo.backend.delete(key)
    assert not check_repository(_reopen(repo)).ok  # every chunk is "not in any index"

    report = repair_index(_reopen(repo))
    packs = {pack_id_from_key(k).hex() for k, _ in repo.backend.list("packs")}
    assert report.ok and set(report.packs_newly_indexed) == packs and report.indexes_written == 1
    fresh = _reopen(repo)
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, point.id, tmp_path) == sha(image)


def test_an_encrypted_repository_is_rebuilt_sealed(image: Path, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "enc"), image_chunk_size=64 * 1024, password="pw")
    point, _ = backup(repo, image)
    for key in _index_files(repo):
        repo.backend.delete(key)
    assert repair_index(Repository.open(repo.backend.location, password="pw")).ok
    [key] = _index_files(repo)
    assert not Path(repo.backend.location, key).read_bytes().startswith(b"PAR1")  # sealed
    fresh = Repository.open(repo.backend.location, password="pw")
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, point.id, tmp_path) == sha(image)


def test_an_unreadable_index_file_names_the_repair_and_is_replaced(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    point, _ = backup(repo, image)
    [key] = _index_files(repo)
    Path(repo.backend.location, key).write_bytes(os.urandom(50))
    with pytest.raises(IndexUnreadable, match="vmkeep repair index"):
        _reopen(repo).load_index()
    report = check_repository(_reopen(repo))  # check reports it, and what it leaves unlisted
    assert [p.object for p in report.problems if p.kind == "bad-index"] == [key]
    assert any(p.kind == "missing-chunk" for p in report.problems)

    report = repair_index(_reopen(repo))
    assert report.ok and report.unreadable_indexes == [key]
    # deleted, or written again under its own name when the rebuilt content is the original's
    assert report.indexes_deleted == 1 or key in _index_files(repo)
    fresh = _reopen(repo)
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, point.id, tmp_path) == sha(image)


@pytest.mark.parametrize("damage", ["sealed", "plaintext-stats"])
def test_damage_no_parser_sees_is_an_unreadable_index_too(
    image: Path, tmp_path: Path, damage: str
) -> None:
    """An encrypted repository's index object that fails its authentication stopped ``check``
    with a bare ``DataCorrupt`` (and ``repair index`` could not replace it); a plaintext index
    file damaged where Parquet still parses (its column statistics) read as if sound.  Both are
    an unreadable index now: its content must hash to its name (index files are named by their
    BLAKE3) and authenticate — ``check`` names it, ``repair index`` replaces it."""
    password = "pw" if damage == "sealed" else None
    repo = Repository.init(str(tmp_path / "r"), image_chunk_size=64 * 1024, password=password)
    point, _ = backup(repo, image)

    def reopen() -> Repository:
        return Repository.open(repo.backend.location, password=password)

    [key] = _index_files(repo)
    path = Path(repo.backend.location, key)
    data = bytearray(path.read_bytes())
    if damage == "sealed":
        data[len(data) // 2] ^= 1
    else:  # a byte of the footer's statistics: Parquet reads the same rows
        from blake3 import blake3

        from vmkeep.storage.index import decode_index

        rows = decode_index(bytes(data), key)
        for pos in range(len(data) - 9, 4, -1):
            trial = bytearray(data)
            trial[pos] ^= 1
            try:
                if decode_index(bytes(trial), key).equals(rows):
                    data = trial
                    break
            except IndexUnreadable:
                continue
        assert blake3(bytes(data)).hexdigest() not in key
    path.write_bytes(bytes(data))
    with pytest.raises(IndexUnreadable, match="vmkeep repair index"):
        reopen().load_index()
    report = check_repository(reopen())
    assert [p.object for p in report.problems if p.kind == "bad-index"] == [key]
    assert repair_index(reopen()).unreadable_indexes == [key]
    fresh = reopen()
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, point.id, tmp_path) == sha(image)


def test_a_wrong_index_entry_is_replaced_by_the_packs_own(repo: Repository, image: Path) -> None:
    backup(repo, image)
    pack_key, size = next(iter(repo.backend.list("packs")))
    pack_id = pack_id_from_key(pack_key)
    entries = read_trailer(repo.backend, pack_id, size, repo.cipher)
    wrong = [(pack_id, replace(entries[0], offset=entries[0].offset + 1))]
    bad_key, data = encode_index(wrong, repo.index_version)  # a second file, one entry off
    repo.backend.put(bad_key, data)
    assert not check_repository(_reopen(repo)).ok

    report = repair_index(_reopen(repo))
    assert report.ok and report.entries_corrected == 1 and report.packs_newly_indexed == []
    assert bad_key not in _index_files(repo) and report.indexes_written == 1
    assert check_repository(_reopen(repo), read_data=True).ok


def _listed(repo: Repository) -> set[bytes]:
    """The packs the index files list (whatever the records say)."""
    from vmkeep.storage.index import decode_index

    out: set[bytes] = set()
    for key in _index_files(repo):
        out |= set(decode_index(repo.backend.get(key), key).column("pack_id").to_pylist())
    return out


def test_a_pack_prune_unlisted_stays_out_unless_an_index_still_lists_it(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    backup(repo, image)
    first = set(_index_files(repo))
    first_packs = _listed(repo)
    other = tmp_path / "other.img"
    other.write_bytes(os.urandom(200_000))
    backup(repo, other, name="other")
    [second] = set(_index_files(repo)) - first
    victim = sorted(_listed(repo) - first_packs)[0]
    # as prune leaves it: no index file lists the pack, a record says it was unlisted
    repo.backend.delete(second)
    gc.write_record(repo.backend, {victim}, gc.UNLISTED)

    report = repair_index(_reopen(repo))
    assert report.ok and report.packs_left_to_prune == 1
    assert victim not in _listed(repo) and first_packs <= _listed(repo)

    # a recorded pack that an index file lists (stored again by a backup since): stays listed
    survivor = sorted(first_packs)[0]
    gc.write_record(repo.backend, {survivor}, gc.UNLISTED)
    again = repair_index(_reopen(repo))
    assert again.packs_left_to_prune == 1 and survivor in _listed(repo)


def test_an_unreadable_pack_is_reported_and_its_index_file_kept(
    repo: Repository, image: Path
) -> None:
    backup(repo, image)
    [key] = _index_files(repo)
    pack_key, size = max(repo.backend.list("packs"), key=lambda ks: ks[1])
    path = Path(repo.backend.location, pack_key)
    path.write_bytes(path.read_bytes()[: size // 2])  # the trailer is gone

    report = repair_index(_reopen(repo))
    assert not report.ok and list(report.unreadable_packs) == [pack_id_from_key(pack_key).hex()]
    assert report.indexes_kept == 1 and key in _index_files(repo)


def test_a_lost_pack_is_named(repo: Repository, image: Path) -> None:
    backup(repo, image)
    pack_key, _size = max(repo.backend.list("packs"), key=lambda ks: ks[1])
    repo.backend.delete(pack_key)
    report = repair_index(_reopen(repo))
    assert report.ok and report.packs_missing == [pack_id_from_key(pack_key).hex()]
    assert not check_repository(_reopen(repo)).ok  # the chunks it held are gone


def test_repair_waits_for_no_prune(repo: Repository, image: Path) -> None:
    backup(repo, image)
    with repo.lock(PRUNE, command="prune"), pytest.raises(RepositoryLocked):
        repair_index(_reopen(repo))


def test_cli_repair_index(repo: Repository, image: Path, tmp_path: Path) -> None:
    import subprocess

    backup(repo, image)
    [key] = _index_files(repo)
    Path(repo.backend.location, key).write_bytes(b"not parquet")
    env = cli_env(VMKEEP_REPO=repo.backend.location)
    broken = subprocess.run([*VMKEEP, "check"], env=env, capture_output=True, text=True)
    assert broken.returncode == 13 and "vmkeep repair index" in broken.stderr, broken.stderr
    assert "Traceback" not in broken.stderr
    done = subprocess.run([*VMKEEP, "repair", "index", "--json"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] and summary["unreadable_indexes"] == [key] and summary["entries"] > 0
    clean = subprocess.run([*VMKEEP, "check", "--read-data"], env=env, capture_output=True,
                           text=True)
    assert clean.returncode == 0, clean.stderr
