"""The local index cache (:mod:`vmkeep.storage.index_cache`): used only when it is authentic and
keyed by the index files listed now; rebuilt after a backup or prune changes them, and after any
corruption — and a load through it gives exactly the index the files give."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, restored_sha, scribble, sha, write_image
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.index import MasterIndex
from vmkeep.storage.index_cache import IndexCache, cache_root, index_set
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

ZERO = timedelta(0)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("VMKEEP_CACHE_DIR", str(root))
    monkeypatch.delenv("VMKEEP_NO_CACHE", raising=False)
    return root


def index_names(repo: Repository) -> str:
    return index_set(k.rsplit("/", 1)[-1] for k, _ in repo.backend.list("index"))


def fresh_load(repo: Repository) -> MasterIndex:
    """The index as a new client (new process) loads it."""
    again = Repository.open(repo.backend.location, password=lambda: "pw")
    try:
        return again.load_index()
    finally:
        again.close()


def uncached_load(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> MasterIndex:
    with monkeypatch.context() as m:
        m.setenv("VMKEEP_NO_CACHE", "1")
        return fresh_load(repo)


def same(a: MasterIndex, b: MasterIndex) -> None:
    assert len(a) == len(b)
    assert dict(a.items()) == dict(b.items())


def cache_of(repo: Repository) -> IndexCache:
    cache = repo.index_cache()
    assert cache is not None
    return cache


@pytest.fixture(params=["plain", "encrypted"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    password = "pw" if request.param == "encrypted" else None
    return Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, password=password)


def test_cache_written_under_the_repository_id_and_used(
    repo: Repository, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup(repo, write_image(tmp_path / "a.img"))
    first = fresh_load(repo)
    path = cache_dir / repo.config.id / "index.cache"
    assert path.is_file()
    assert cache_of(repo).load(index_names(repo)) is not None
    # the second load reads no index file at all
    reads: list[str] = []
    real_get = type(repo.raw_backend).get

    def counting_get(self, key, *a, **kw):  # type: ignore[no-untyped-def]
        reads.append(key)
        return real_get(self, key, *a, **kw)

    monkeypatch.setattr(type(repo.raw_backend), "get", counting_get)
    second = fresh_load(repo)
    assert not [k for k in reads if k.startswith("index/")]
    same(first, second)
    monkeypatch.undo()
    same(second, uncached_load(repo, monkeypatch))


def test_encrypted_cache_holds_no_index_in_clear(tmp_path: Path, cache_dir: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, password="pw")
    backup(repo, write_image(tmp_path / "a.img"))
    index = fresh_load(repo)
    data = (cache_dir / repo.config.id / "index.cache").read_bytes()
    for blob_id, loc in list(index.items())[:20]:
        assert blob_id not in data and loc.pack_id not in data


def test_rebuilt_after_a_backup_adds_an_index(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = write_image(tmp_path / "a.img")
    backup(repo, image)
    before = fresh_load(repo)
    key_before = index_names(repo)
    scribble(image, [(100_000, 300_000)], seed=7)
    point, _ = backup(repo, image)
    assert index_names(repo) != key_before
    after = fresh_load(repo)
    assert len(after) > len(before)
    same(after, uncached_load(repo, monkeypatch))
    assert cache_of(repo).load(index_names(repo)) is not None
    assert cache_of(repo).load(key_before) is None  # replaced, not kept beside
    fresh = Repository.open(repo.backend.location, password=lambda: "pw")
    assert restored_sha(fresh, point.id, tmp_path) == sha(image)


def test_after_a_backup_only_the_new_index_file_is_read(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = write_image(tmp_path / "a.img")
    backup(repo, image)
    fresh_load(repo)
    old = {k for k, _ in repo.backend.list("index")}
    scribble(image, [(100_000, 300_000)], seed=7)
    backup(Repository.open(repo.backend.location, password=lambda: "pw"), image)
    new = {k for k, _ in repo.backend.list("index")} - old
    assert len(new) == 1
    reads: list[str] = []
    real_get = type(repo.raw_backend).get

    def counting_get(self, key, *a, **kw):  # type: ignore[no-untyped-def]
        reads.append(key)
        return real_get(self, key, *a, **kw)

    monkeypatch.setattr(type(repo.raw_backend), "get", counting_get)
    after = fresh_load(repo)
    assert [k for k in reads if k.startswith("index/")] == sorted(new)
    monkeypatch.undo()
    same(after, uncached_load(repo, monkeypatch))


def test_rebuilt_after_prune_rewrites_the_index(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write_image(tmp_path / "a.img", seed=1)
    b = write_image(tmp_path / "b.img", seed=2)
    pa_, _ = backup(repo, a, name="a")
    pb, _ = backup(repo, b, name="b")
    fresh_load(repo)  # cache for the index files before prune
    key_before = index_names(repo)
    forget_ids(repo, [pb.id])
    report = prune(repo, grace=ZERO)
    assert report.packs_deleted > 0
    assert index_names(repo) != key_before
    after = fresh_load(repo)
    same(after, uncached_load(repo, monkeypatch))
    fresh = Repository.open(repo.backend.location, password=lambda: "pw")
    assert fresh.index.packs() <= {p for p in after.packs()}
    assert restored_sha(fresh, pa_.id, tmp_path) == sha(a)


@pytest.mark.parametrize(
    "damage",
    ["flip-body", "flip-mac", "truncate", "empty", "garbage"],
)
def test_corrupt_cache_is_rebuilt_and_the_result_is_right(
    repo: Repository,
    tmp_path: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
) -> None:
    image = write_image(tmp_path / "a.img")
    point, _ = backup(repo, image)
    good = fresh_load(repo)
    path = cache_dir / repo.config.id / "index.cache"
    data = bytearray(path.read_bytes())
    if damage == "flip-body":
        data[len(data) // 3] ^= 0x40
    elif damage == "flip-mac":
        data[-12] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not a cache at all" * 10)
    path.write_bytes(bytes(data))
    assert cache_of(repo).load(index_names(repo)) is None
    same(fresh_load(repo), good)
    assert cache_of(repo).load(index_names(repo)) is not None  # rebuilt
    fresh = Repository.open(repo.backend.location, password=lambda: "pw")
    assert restored_sha(fresh, point.id, tmp_path) == sha(image)


def test_never_used_when_the_index_set_differs(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An authentic cache written for another set of index files — here one holding a forged
    location for every blob — is ignored: the index comes from the files."""
    image = write_image(tmp_path / "a.img")
    backup(repo, image)
    good = fresh_load(repo)
    cache = cache_of(repo)
    key = index_names(repo)
    cached = cache.load_any()
    assert cached is not None and cached.index_set == key
    table = cached.table
    import pyarrow as pa

    forged = table.set_column(2, "offset", pa.array([7] * table.num_rows, pa.uint64()))
    cache.store(forged, [("0" * 64 + ".parquet", table.num_rows)])  # another file's rows
    assert cache.load(key) is None
    loaded = fresh_load(repo)
    same(loaded, good)
    # the same forged rows under the right names would have been used: the names are the guard
    cache.store(forged, [(name, count) for name, (_, count) in cached.files.items()])
    assert cache.load(key) is not None


def test_a_foreign_key_cannot_make_a_valid_cache(repo: Repository, tmp_path: Path) -> None:
    backup(repo, write_image(tmp_path / "a.img"))
    fresh_load(repo)
    key = index_names(repo)
    ours = cache_of(repo)
    cached = ours.load_any()
    assert cached is not None and ours.load(key) is not None
    root = cache_root()
    assert root is not None
    other = IndexCache(root, repo.config.id, b"\x01" * 32, None)
    other.store(cached.table, [(n, c) for n, (_, c) in cached.files.items()])  # wrong key
    assert ours.load_any() is None and ours.load(key) is None


def test_no_cache_writes_nothing(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMKEEP_NO_CACHE", "1")
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    backup(repo, write_image(tmp_path / "a.img"))
    assert repo.index_cache() is None
    assert len(fresh_load(repo)) > 0
    assert not cache_dir.exists()


def test_unwritable_cache_dir_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("VMKEEP_CACHE_DIR", str(blocker / "cache"))
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    backup(repo, write_image(tmp_path / "a.img"))
    assert len(fresh_load(repo)) > 0
