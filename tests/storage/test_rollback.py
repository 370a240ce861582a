"""Rollback detection: forget tombstones, the client's record of points seen, sealed config."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fast_kdf import TEST_SCRYPT_N
from tests.storage.storage_helpers import backup, scribble, write_image
from vmkeep.storage import crypto
from vmkeep.storage.catalogs import catalog_key
from vmkeep.storage.checker import check_repository
from vmkeep.storage.errors import (
    DataCorrupt,
    EncryptionDowngrade,
    ObjectNotFound,
    PointNotFound,
    RepositoryRolledBack,
)
from vmkeep.storage.forget import forget_ids, tombstone_key
from vmkeep.storage.known_state import KnownState
from vmkeep.storage.manifest import point_key
from vmkeep.storage.repository import CONFIG_SEALED_KEY, Repository

PW = "correct horse battery staple"
SIZE = 400_000


@pytest.fixture(autouse=True)
def client_a(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test starts as client A with its own state directory."""
    state = tmp_path / "state-a"
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(state))
    monkeypatch.setattr(crypto, "SCRYPT_N", TEST_SCRYPT_N)  # test-only, in-process
    for name in ("VMKEEP_PASSWORD", "VMKEEP_PASSWORD_FILE", "VMKEEP_PASSWORD_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    return state


def make_repo(tmp_path: Path, password: str | None = None) -> Repository:
    return Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, password=password)


def two_points(repo: Repository, tmp_path: Path) -> tuple[str, str]:
    img = write_image(tmp_path / "a.img", size=SIZE)
    p1, _ = backup(repo, img)
    scribble(img, [(0, 70_000)])
    p2, _ = backup(repo, img)
    return p1.id, p2.id


def reopen(repo: Repository, password: str | None = None) -> Repository:
    return Repository.open(repo.backend.location, password=password)


def test_forget_then_list_is_fine(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    p1, p2 = two_points(repo, tmp_path)
    repo.backend.put(catalog_key(p1), b"derived catalog")
    assert [p.id for p in repo.list_points()] == [p1, p2]
    forget_ids(repo, [p1])
    assert not repo.backend.exists(point_key(p1))
    assert not repo.backend.exists(catalog_key(p1))
    tomb = json.loads(repo.backend.get(tombstone_key(p1)))
    assert tomb["format"] == "vmkeep-tombstone" and tomb["point"] == p1 and tomb["hostname"]
    assert [p.id for p in reopen(repo).list_points()] == [p2]
    state = repo.known.load()
    assert state is not None and state.points == {p2}


def test_normal_listing_never_lists_tombstones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path)
    p1, _p2 = two_points(repo, tmp_path)
    forget_ids(repo, [p1])
    fresh = reopen(repo)
    listed: list[str] = []
    inner_list = fresh.backend.list
    monkeypatch.setattr(
        fresh.backend, "list", lambda prefix: listed.append(prefix) or inner_list(prefix)
    )
    fresh.list_points()
    fresh.resolve("latest")
    assert "forgotten" not in listed


def test_deleted_manifest_is_a_rollback(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    p1, p2 = two_points(repo, tmp_path)  # recorded as each backup commits, no listing needed
    repo.backend.delete(point_key(p2))  # behind vmkeep's back
    fresh = reopen(repo)
    with pytest.raises(RepositoryRolledBack) as err:
        fresh.list_points()
    assert err.value.exit_code == 18
    assert p2[:12] in str(err.value) and p1[:12] not in str(err.value)
    with pytest.raises(RepositoryRolledBack):
        fresh.resolve("latest")
    with pytest.raises(RepositoryRolledBack):  # the next backup refuses to build on it
        backup(fresh, tmp_path / "a.img")
    with pytest.raises(RepositoryRolledBack):  # and keeps refusing: nothing was re-baselined
        reopen(repo).resolve(p1[:8])


def test_restoring_an_older_copy_of_the_whole_repository_is_detected(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    img = write_image(tmp_path / "a.img", size=SIZE)
    p1, _ = backup(repo, img)
    old = tmp_path / "old-copy"
    shutil.copytree(repo.backend.location, old)
    scribble(img, [(0, 70_000)])
    p2, _ = backup(repo, img)
    assert len(reopen(repo).list_points()) == 2
    shutil.rmtree(repo.backend.location)
    shutil.copytree(old, repo.backend.location)
    with pytest.raises(RepositoryRolledBack) as err:
        reopen(repo).list_points()
    assert p2.id[:12] in str(err.value) and p1.id[:12] not in str(err.value)


def test_escape_hatch_rebaselines(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    p1, p2 = two_points(repo, tmp_path)
    repo.backend.delete(point_key(p2))
    fresh = reopen(repo)
    with pytest.raises(RepositoryRolledBack):
        fresh.list_points()
    assert fresh.accept_rollback() == [p2]
    assert [p.id for p in reopen(repo).list_points()] == [p1]
    assert reopen(repo).accept_rollback() == []  # nothing more to accept


def test_forged_tombstone_in_an_encrypted_repository_is_not_accepted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, PW)
    p1, p2 = two_points(repo, tmp_path)
    forget_ids(repo, [p1])  # a genuine, sealed tombstone for p1
    genuine = repo.raw_backend.get(tombstone_key(p1))
    assert b"vmkeep-tombstone" not in genuine
    repo.raw_backend.delete(point_key(p2))
    forged = json.dumps({"format": "vmkeep-tombstone", "version": 1, "point": p2}).encode()
    for fake in (forged, genuine):  # written without the key, or replayed under another name
        repo.raw_backend.put(tombstone_key(p2), fake)
        with pytest.raises(RepositoryRolledBack) as err:
            reopen(repo, PW).list_points()
        assert p2[:12] in str(err.value)


def test_tombstones_in_an_unencrypted_repository_must_name_their_point(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    p1, p2 = two_points(repo, tmp_path)
    forget_ids(repo, [p1])
    repo.backend.delete(point_key(p2))
    repo.backend.put(tombstone_key(p2), repo.backend.get(tombstone_key(p1)))
    with pytest.raises(RepositoryRolledBack):
        reopen(repo).list_points()


def test_config_tampered_in_an_encrypted_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, PW)
    loc = repo.backend.location
    assert reopen(repo, PW).config.id == repo.config.id
    config = Path(loc, "config")
    original = config.read_bytes()
    obj = json.loads(original)
    obj["id"] = "0" * 32  # a new id would dodge the clients' records
    config.write_bytes(json.dumps(obj, indent=2).encode())
    with pytest.raises(DataCorrupt, match="config was modified"):
        Repository.open(loc, password=PW)
    config.write_bytes(original)
    sealed = Path(loc, CONFIG_SEALED_KEY).read_bytes()
    Path(loc, CONFIG_SEALED_KEY).unlink()
    with pytest.raises(DataCorrupt, match="missing"):
        Repository.open(loc, password=PW)
    Path(loc, CONFIG_SEALED_KEY).write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(DataCorrupt, match="authentication failed"):
        Repository.open(loc, password=PW)
    Path(loc, CONFIG_SEALED_KEY).write_bytes(sealed)
    assert Repository.open(loc, password=PW).config.encrypted


def test_config_downgraded_to_no_encryption_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, PW)
    config = Path(repo.backend.location, "config")
    obj = json.loads(config.read_bytes())
    obj["encryption"], obj["hash_key"] = "none", "ab" * 32
    config.write_bytes(json.dumps(obj, indent=2).encode())
    with pytest.raises(EncryptionDowngrade) as err:
        Repository.open(repo.backend.location)
    assert err.value.exit_code == 13


def test_config_changed_under_a_client_is_detected(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    two_points(repo, tmp_path)
    config = Path(repo.backend.location, "config")
    obj = json.loads(config.read_bytes())
    obj["compression_level"] = 19
    config.write_bytes(json.dumps(obj, indent=2).encode())
    with pytest.raises(RepositoryRolledBack, match="config differs"):
        reopen(repo).list_points()
    reopen(repo).accept_rollback()
    assert len(reopen(repo).list_points()) == 2


def test_two_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path)
    p1, p2 = two_points(repo, tmp_path)  # client A saw both
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(tmp_path / "state-b"))
    b = reopen(repo)
    assert len(b.list_points()) == 2
    forget_ids(b, [p1])
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(tmp_path / "state-a"))
    a = reopen(repo)
    assert [p.id for p in a.list_points()] == [p2]  # B's tombstone vouches for p1
    state = a.known.load()
    assert state is not None and state.points == {p2}
    # a point B never saw: B cannot notice it vanishing (documented); A can
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(tmp_path / "state-b"))
    b = reopen(repo)
    img = tmp_path / "a.img"
    scribble(img, [(100_000, 10_000)])
    p3, _ = backup(b, img)
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(tmp_path / "state-a"))
    assert len(reopen(repo).list_points()) == 2
    repo.backend.delete(point_key(p3.id))
    with pytest.raises(RepositoryRolledBack):
        reopen(repo).list_points()


def test_resolving_a_forgotten_point_is_not_found(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    p1, _ = two_points(repo, tmp_path)
    forget_ids(repo, [p1])
    with pytest.raises(PointNotFound):
        reopen(repo).resolve(p1[:12])


def _add_ids(directory: str, repo_id: str, worker: int) -> None:
    state = KnownState(repo_id, directory=Path(directory))
    for i in range(25):
        state.update("c" * 64, add=[f"{worker:02x}{i:062x}"])


def test_concurrent_updates_keep_every_id(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_ids, args=(str(tmp_path), "ab" * 16, w)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # a hang guard: six spawned interpreters on a loaded machine
        assert p.exitcode == 0
    state = KnownState("ab" * 16, directory=tmp_path).load()
    assert state is not None and len(state.points) == 6 * 25
    assert not [p for p in (tmp_path / "security").iterdir() if "tmp" in p.name]


def test_unusable_state_dir_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING, logger="vmkeep.storage.known_state"):
        repo = make_repo(tmp_path)
        two_points(repo, tmp_path)
        assert len(reopen(repo).list_points()) == 2
    assert "rollback detection is off" in caplog.text


def test_state_file_format(tmp_path: Path, client_a: Path) -> None:
    repo = make_repo(tmp_path)
    p1, p2 = two_points(repo, tmp_path)
    obj = json.loads((client_a / "security" / f"{repo.config.id}.json").read_bytes())
    assert obj["format"] == "vmkeep-client-state" and obj["version"] == 1
    assert obj["repository"] == repo.config.id and sorted(obj["points"]) == sorted([p1, p2])
    assert len(obj["config_blake3"]) == 64


def test_cli_exit_code_and_accept_rollback(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(repo))

    def vmkeep(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.support.run_cli", *args],
            capture_output=True, text=True, env=env,
        )

    assert vmkeep("init", "--chunk-size", "64").returncode == 0
    img = write_image(tmp_path / "a.img", size=SIZE)
    ids = []
    for _ in range(2):
        out = vmkeep("backup", "image", str(img), "--name", "a", "--json", "--no-prefect")
        assert out.returncode == 0, out.stderr
        ids.append(json.loads(out.stdout)["id"])
        scribble(img, [(0, 70_000)])
    assert (tmp_path / "state-a" / "security").is_dir()  # inherited VMKEEP_STATE_DIR
    (repo / "manifests" / f"{ids[1]}.parquet").unlink()
    listed = vmkeep("list")
    assert listed.returncode == 18, listed.stderr
    assert ids[1][:12] in listed.stderr and "--accept-rollback" in listed.stderr
    assert vmkeep("backup", "image", str(img), "--name", "a", "--no-prefect").returncode == 18
    accepted = vmkeep("check", "--accept-rollback", "--json")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["accepted_rollback"] == {"gone": [ids[1]]}
    assert vmkeep("list").returncode == 0


def test_crash_between_tombstone_and_manifest_delete_is_harmless(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    p1, p2 = two_points(repo, tmp_path)
    repo.backend.put(tombstone_key(p1), b"{}")  # as if forget died right after its first step
    assert [p.id for p in reopen(repo).list_points()] == [p1, p2]
    report = check_repository(reopen(repo))
    assert report.ok and len(report.warnings) == 1 and p1[:12] in report.warnings[0]
    forget_ids(reopen(repo), [p1])  # running forget again finishes the job
    assert [p.id for p in reopen(repo).list_points()] == [p2]
    assert check_repository(reopen(repo)).warnings == []


def test_tombstones_expire_without_weakening_detection_of_recent_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from vmkeep import clock
    from vmkeep.storage.prune import prune

    repo = make_repo(tmp_path)
    p1, p2 = two_points(repo, tmp_path)
    start = clock.now()
    with clock.frozen(start):
        assert set(reopen(repo).point_ids()) == {p1, p2}  # client A saw both, now
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(tmp_path / "state-b"))  # client B forgets p1
    forget_ids(reopen(repo), [p1])
    with clock.frozen(start + timedelta(days=89)):
        assert prune(reopen(repo), grace=timedelta(0)).tombstones_deleted == 0
    with clock.frozen(start + timedelta(days=91)):
        report = prune(reopen(repo), grace=timedelta(0))
    assert report.tombstones_deleted == 1
    assert not repo.backend.exists(tombstone_key(p1))
    # a manifest deleted behind everyone's back (a rollback of the newest point) ...
    repo.backend.delete(point_key(p2))
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(tmp_path / "state-a"))
    with clock.frozen(start + timedelta(days=10)), pytest.raises(RepositoryRolledBack) as err:
        reopen(repo).point_ids()  # A listed 10 days ago: every tombstone it needs must exist
    assert p1[:12] in str(err.value) and p2[:12] in str(err.value)
    # ... is still caught for points A saw recently; only what it last saw longer ago than
    # tombstones are kept (plus a day) is taken as forgotten
    with clock.frozen(start + timedelta(days=92)):
        assert reopen(repo).point_ids() == []
    state = KnownState(repo.config.id, repo.backend.location).load()
    assert state is not None and state.points == set() and state.listed is not None


def test_a_point_forgotten_while_listing_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """forget (shared lock) beside a listing (a backup looking for its parent): the manifest
    vanishes between the listing and its read.  Staged exactly, no timing: the forget runs inside
    the listing.  Found by test_prune_concurrency under load (exit 13, object not found)."""
    repo = make_repo(tmp_path)
    p1, p2 = two_points(repo, tmp_path)
    lister = reopen(repo)
    inner = lister._list_point_ids

    def list_then_forget() -> list[str]:
        ids = inner()
        forget_ids(reopen(repo), [p1])  # another process, right after our listing
        return ids

    monkeypatch.setattr(lister, "_list_point_ids", list_then_forget)
    assert [p.id for p in lister.list_points()] == [p2]


def test_a_manifest_vanishing_while_listing_without_tombstone_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path)
    p1, _p2 = two_points(repo, tmp_path)
    lister = reopen(repo)
    inner = lister._list_point_ids

    def list_then_delete() -> list[str]:
        ids = inner()
        repo.backend.delete(point_key(p1))  # behind vmkeep's back: damage, not a forget
        return ids

    monkeypatch.setattr(lister, "_list_point_ids", list_then_delete)
    with pytest.raises(ObjectNotFound):
        lister.list_points()
