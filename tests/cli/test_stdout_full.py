"""Standard output that cannot be written (``> /dev/full``: a full disk behind a redirection)
ends a command with one line and exit 15, as a full restore target does — it was a traceback —
while a reader that went away (``| head``) still ends it quietly."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.run_cli import VMKEEP, cli_env


def test_a_full_standard_output_is_one_line_and_exit_15(tmp_path: Path) -> None:
    env = cli_env(dict(os.environ), PREFECT_API_URL="", VMKEEP_REPO=str(tmp_path / "repo"),
                  VMKEEP_STATE_DIR=str(tmp_path / "state"))
    assert subprocess.run([*VMKEEP, "init"], env=env, capture_output=True).returncode == 0
    for args in (["list", "--json"], ["list"], ["--help"]):
        with open("/dev/full", "w") as full:
            done = subprocess.run([*VMKEEP, *args], env=env, stdout=full, stderr=subprocess.PIPE,
                                  text=True, timeout=120)
        assert done.returncode == 15, (args, done.stderr)
        assert "Cannot write to standard output: No space left on device" in done.stderr
        assert "Traceback" not in done.stderr
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    done = subprocess.run([*VMKEEP, "list", "--json"], env=env, stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert "Traceback" not in done.stderr and "Cannot write" not in done.stderr, done.stderr


def test_an_image_restored_to_a_full_standard_output_is_a_target_error(tmp_path: Path) -> None:
    """``restore image POINT --to - > file`` on a full disk: exit 15 naming the byte it got to
    (an ``OSError`` traceback before; a closed pipe was already handled)."""
    env = cli_env(dict(os.environ), PREFECT_API_URL="", VMKEEP_REPO=str(tmp_path / "repo"),
                  VMKEEP_STATE_DIR=str(tmp_path / "state"))
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    assert subprocess.run([*VMKEEP, "init"], env=env, capture_output=True).returncode == 0
    backed = subprocess.run([*VMKEEP, "backup", "image", str(image), "--name", "d", "--json"],
                            env=env, capture_output=True, text=True)
    assert backed.returncode == 0, backed.stderr
    with open("/dev/full", "w") as full:
        done = subprocess.run([*VMKEEP, "restore", "image", "d@latest", "--to", "-"], env=env,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 15, done.stderr
    assert "Cannot restore to standard output: No space left on device after 0 bytes" \
        in done.stderr and "Traceback" not in done.stderr
