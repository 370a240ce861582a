"""``vmkeep --version``: the version and the formats this build writes, exit 0, from any
working directory (a real process, as a user runs it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.run_cli import VMKEEP, cli_env
from vmkeep.storage.config import REPO_VERSION
from vmkeep.tape.label import VERSION as TAPE_VERSION


def test_version_names_the_formats_it_writes(tmp_path: Path) -> None:
    out = subprocess.run([*VMKEEP, "--version"], capture_output=True, text=True,
                         env=cli_env(), cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out
    assert re.fullmatch(
        rf"vmkeep \d+\.\d+\.\d+\S* \(repository format {REPO_VERSION}, tape format "
        rf"{TAPE_VERSION}; Python 3\.\d+\.\d+\S*\)\n", out.stdout), out.stdout
