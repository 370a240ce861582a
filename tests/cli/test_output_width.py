"""Output that is not a terminal is not wrapped: a long line stays one line for `grep`, as
restic's does (rich wrapped pipes and files at 80 columns)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.storage.storage_helpers import backup, write_image
from tests.support.run_cli import VMKEEP, cli_env
from vmkeep.storage.repository import Repository


def test_a_long_row_stays_one_line_in_a_pipe(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    name = "vm-" + "x" * 150
    point, _ = backup(repo, write_image(tmp_path / "d.img", size=128 * 1024), name=name)
    env = cli_env()
    env.pop("COLUMNS", None)
    for verb in ("list", "ls"):
        args = [verb] if verb == "list" else [verb, point.id[:8]]
        out = subprocess.run([*VMKEEP, *args, "--repo", str(tmp_path / "repo")],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        [row] = [line for line in out.stdout.splitlines() if point.id[:8] in line]
        assert name in row, out.stdout  # the id and the whole name on one line
