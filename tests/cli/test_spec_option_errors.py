"""A value a job's spec refuses, given on the command line, is a usage error (exit 2) that names
the option — not "Invalid BackupFilesSpec: name: …" (exit 14), the error a deployment's or an API
caller's spec gets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmkeep.jobs import specs


def _vmkeep(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VMKEEP_REPO=str(tmp_path / "repo"), VMKEEP_PASSWORD="pw",
               VMKEEP_STATE_DIR=str(tmp_path / "state"), VMKEEP_CONFIG_DIR=str(tmp_path / "cfg"),
               PREFECT_API_URL="")
    return subprocess.run([sys.executable, "-m", "vmkeep.cli", *argv], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize(("name", "says"), [
    ("a\nb", "--name: holds a control character"),
    (" ", "--name: is blank"),
    ("web@latest", "--name: 'latest' and a trailing '@latest'"),
])
def test_a_refused_name_is_a_usage_error_naming_the_option(
    tmp_path: Path, name: str, says: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    for argv in (["backup", "files", str(src)], ["backup", "image", str(image)]):
        done = _vmkeep(tmp_path, *argv, "--name", name)
        assert done.returncode == 2, (argv, done.stderr)
        assert says in done.stderr and "Spec" not in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "repo").exists()  # nothing was opened, let alone written


def test_a_spec_from_elsewhere_keeps_its_own_error() -> None:
    """A deployment's parameters or an API caller's spec: no option to name, exit 14."""
    with pytest.raises(specs.InvalidSpec) as caught:
        specs.build(specs.BackupFilesSpec, {"repo": "/r", "source": "/s", "name": "a\nb"})
    assert caught.value.exit_code == 14
    assert "Invalid BackupFilesSpec: name: holds a control character" in str(caught.value)
    assert caught.value.problems == (("name", caught.value.problems[0][1]),)
