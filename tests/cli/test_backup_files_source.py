"""``backup files`` records a local source as an absolute path, as restic does: the point says
which folder it holds whatever folder the command ran in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.restore.restore_helpers import vmkeep_json


def test_a_relative_source_is_recorded_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("x")
    repo = tmp_path / "repo"
    vmkeep_json("init", repo=repo)
    monkeypatch.chdir(tmp_path)
    done = vmkeep_json("backup", "files", "data", "--name", "d", repo=repo)
    assert done["source"] == str(tmp_path / "data")
    again = vmkeep_json("backup", "files", "./data/", "--name", "d", repo=repo)
    assert again["source"] == str(tmp_path / "data") and again["files_unchanged"] == 1
