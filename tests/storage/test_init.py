"""init: a new repository goes into a new or empty folder, never among other files."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.storage.errors import LocationNotEmpty, RepositoryExists
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
