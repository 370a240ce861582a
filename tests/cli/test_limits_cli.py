"""``--limit-upload`` / ``--limit-download`` / ``--limit-read`` as users run them: global options
(and their variables) that pace every repository transfer of the command — here an off-site
``copy``, whose destination is written under the upload limit, and a restore read under the
download limit — and the reads of the disk being backed up.  Durations are checked as lower
bounds only (a slow machine makes them longer, never shorter)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.support.run_cli import VMKEEP, cli_env

KIB = 1024


def vmkeep(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_") or k in (
        "VMKEEP_STATE_DIR", "VMKEEP_CONFIG_DIR")}
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, timeout=600,
                          env=cli_env(base, **{"PREFECT_API_URL": "", **env}))


def test_a_copy_keeps_to_the_upload_and_download_limits(tmp_path: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1536 * KIB) + bytes(4 << 20))  # 1.5 MiB that do not compress
    for repo in (src, dst):
        assert vmkeep("init", "--repo", repo).returncode == 0
    start = time.monotonic()
    done = vmkeep("--limit-read", "4096", "backup", "image", str(image), "--name", "web01",
                  "--repo", src, "--json")
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    read = json.loads(done.stdout)["bytes_read"]
    assert read >= 1536 * KIB and took >= (read / KIB - 256) / 4096  # the image read paced

    start = time.monotonic()
    copied = vmkeep("--limit-upload", "512", "copy", "--repo", dst, "--from-repo", src, "--json")
    took = time.monotonic() - start
    assert copied.returncode == 0, copied.stderr
    [row] = json.loads(copied.stdout)["copied"]
    assert row["bytes_stored"] >= 1536 * KIB
    assert took >= (1536 - 256) / 512  # every stored byte paced at 512 KiB/s, after one slice

    out = tmp_path / "restored.img"
    start = time.monotonic()
    restored = vmkeep("restore", "image", "web01@latest", "--repo", dst, "--to", str(out),
                      VMKEEP_LIMIT_DOWNLOAD="1024")
    took = time.monotonic() - start
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == image.read_bytes()
    assert took >= (1536 - 256) / 1024


def test_a_limit_that_is_not_a_positive_number_is_a_usage_error(tmp_path: Path) -> None:
    zero = vmkeep("--limit-upload", "0", "list", "--repo", str(tmp_path))
    assert zero.returncode == 2 and "Traceback" not in zero.stderr
    assert "--limit-upload" in zero.stderr
    bad = vmkeep("init", "--repo", str(tmp_path / "r"), VMKEEP_LIMIT_DOWNLOAD="fast")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "VMKEEP_LIMIT_DOWNLOAD" in bad.stderr
