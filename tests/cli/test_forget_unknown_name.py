"""``forget --name`` with a name no restore point has (a typo) says so: it forgot nothing of
what the user meant."""

from __future__ import annotations

from pathlib import Path

from tests.restore.restore_helpers import run_cli, vmkeep_json


def test_a_name_without_points_is_noted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo = tmp_path / "repo"
    vmkeep_json("init", repo=repo)
    vmkeep_json("backup", "files", str(src), "--name", "web01", repo=repo)
    code, _out, err = run_cli("forget", "--keep-last", "1", "--name", "web1", "--name", "web01",
                              repo=repo)
    assert code == 0, err
    assert "note: no restore point is named 'web1'" in err and "'web01'" not in err
    code, _out, err = run_cli("forget", "--keep-last", "1", "--name", "web01", repo=repo)
    assert code == 0 and "note" not in err, err
