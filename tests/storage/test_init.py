"""init: a new repository goes into a new or empty folder, never among other files."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from vmkeep import clock
from vmkeep.storage.errors import FormatError, LocationNotEmpty, RepositoryExists
from vmkeep.storage.locks import EXCLUSIVE, LockInfo
from vmkeep.storage.repository import Repository


def test_a_new_or_empty_folder_takes_a_repository(tmp_path: Path) -> None:
    Repository.init(str(tmp_path / "new" / "deeper"))
    (tmp_path / "empty").mkdir()
    Repository.init(str(tmp_path / "empty"))
    with pytest.raises(RepositoryExists):
        Repository.init(str(tmp_path / "empty"))


def test_a_folder_holding_other_files_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    (home / "projects").mkdir()
    with pytest.raises(LocationNotEmpty) as refused:
        Repository.init(str(home))
    assert refused.value.exit_code == 10
    assert "notes.txt, projects" in refused.value.get_message()
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt", "projects"]


def test_an_interrupted_encrypted_init_can_be_run_again(tmp_path: Path) -> None:
    """init writes the key file (and the sealed config) before config: a crash in between
    leaves a folder init must take again."""
    repo = tmp_path / "repo"
    (repo / "keys").mkdir(parents=True)
    (repo / "keys" / "0123abcd").write_bytes(b"a key of a crashed init")
    (repo / "config.sealed").write_bytes(b"sealed")
    (repo / ".vmkeep-tmp-0011223344556677").write_bytes(b"half written")
    Repository.init(str(repo), password="s3cret")
    assert Repository.open(str(repo), password="s3cret").config.encryption == "aes-256-gcm"


def test_of_inits_racing_for_one_new_folder_one_wins_and_the_others_find_its_repository(
    tmp_path: Path,
) -> None:
    """init checks for a repository and then writes one: without an exclusive hold on the
    location, racers all passed the check and all reported success — one repository left,
    its config from one and its sealed config (and keys) from others."""
    racers = 4
    for round_ in range(3):
        repo = tmp_path / f"repo{round_}"
        outcomes = _race_inits(repo, [f"pw{i}" for i in range(racers)])
        [winner] = [o for o in outcomes if o != "exists"]
        assert len(outcomes) == racers
        opened = Repository.open(str(repo), password=winner)  # its config, sealed config, key
        assert opened.config.encryption == "aes-256-gcm"
        assert [p.name for p in (repo / "keys").iterdir()] == [opened.key_id]
        assert not list((repo / "locks").iterdir())


def test_the_lock_of_a_killed_init_does_not_stand_in_the_way(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "locks").mkdir(parents=True)
    now = clock.now()
    killed = LockInfo("ab" * 16, EXCLUSIVE, socket.gethostname(), _dead_pid(), now, now, "init")
    (repo / killed.key).write_text(json.dumps(killed.to_json()))
    Repository.init(str(repo))
    assert not list((repo / "locks").iterdir())


def _race_inits(repo: Path, passwords: list[str]) -> list[str]:
    """Run one init per password at once; each outcome: its password, or "exists"."""
    start = threading.Barrier(len(passwords))
    outcomes: list[str] = []

    def init(password: str) -> None:
        start.wait()
        try:
            Repository.init(str(repo), password=password)
            outcomes.append(password)
        except RepositoryExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=init, args=(password,)) for password in passwords]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_pack_sizes_outside_what_a_pack_built_in_memory_allows_are_refused(
    tmp_path: Path,
) -> None:
    """``init --pack-size 99999999`` made a repository whose packs would be built in memory up
    to 95 TiB; a negative one made one pack per blob.  A config saying so is damaged."""
    for size in (0, -1 << 20, 513 << 20):
        with pytest.raises(ValueError, match="pack size must be between"):
            Repository.init(str(tmp_path / f"r{size}"), pack_size=size)
        assert not (tmp_path / f"r{size}").exists()
    Repository.init(str(tmp_path / "ok"), pack_size=512 << 20)
    config = json.loads((tmp_path / "ok" / "config").read_text())
    for bad in (0, -5, "32", 1 << 40):
        (tmp_path / "ok" / "config").write_text(json.dumps({**config, "pack_size": bad}))
        with pytest.raises(FormatError, match="implausible pack size"):
            Repository.open(str(tmp_path / "ok"))


def test_init_option_values_out_of_range_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.restore.restore_helpers import run_cli

    monkeypatch.chdir(tmp_path)  # where a blank repository path would have gone

    for args, says in ((["--pack-size", "0"], "--pack-size"),
                       (["--pack-size", "99999999"], "--pack-size"),
                       (["--image-cdc", "-5"], "--image-cdc must be 0"),
                       # its sizes were shown as an internal dict of byte counts
                       (["--image-cdc", "999999999"], "--image-cdc 999999999 is larger than a "
                                                      "chunk (1024 KiB)"),
                       (["--image-cdc", "128", "--chunk-size", "64"], "larger than a chunk")):
        code, _out, err = run_cli("init", *args, repo=tmp_path / "r")
        assert code == 2 and says in err, (args, err)
        assert not (tmp_path / "r").exists()
    for blank in (" ", "\t"):  # a blank VMKEEP_REPO made a repository in a folder named so
        code, _out, err = run_cli("init", "--repo", blank)
        assert code == 2 and "no repository given" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
