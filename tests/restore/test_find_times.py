"""``vmkeep find`` shows each match's modification time — which version of a file a point
holds — not the time of the point (its id is in the ref)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from tests.restore.restore_helpers import run_cli, vmkeep_json


def test_a_match_shows_the_files_modification_time(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "report.txt").write_text("q3\n")
    when = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC).timestamp()
    os.utime(src / "report.txt", (when, when))
    repo = tmp_path / "repo"
    vmkeep_json("init", repo=repo)
    point = vmkeep_json("backup", "files", str(src), "--name", "share", repo=repo)["id"]
    code, out, err = run_cli("find", "report.txt", repo=repo)
    assert code == 0, err
    [line] = out.splitlines()
    assert line.startswith(f"{point[:8]}:/report.txt  file ") and line.endswith(
        "2001-02-03T04:05:06"), line
