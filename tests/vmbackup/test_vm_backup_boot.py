"""The lab's Linux VM, backed up from the ESX lab, boots from its restore point (verify boot).

linux01's system disk is the lab's ``linux-system`` image: GPT, ext4, and a FAT boot partition
with SYSLINUX, Debian's kernel and a busybox initramfs (:mod:`vmkeep.lab.bootable`), so the
restore point boots in QEMU to ``linux01 login:``.  The timeout is a generous bound (TCG on a
loaded machine), not a speed assertion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("qemu-system-x86_64", "nbdkit", "nbdfuse"))
        or not list(Path("/boot").glob("vmlinuz-*")),
        reason="QEMU, nbdkit or linux-image-amd64 missing (see .ci/apt-packages)",
    ),
]


def _cli(*args: str, repo: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(VMKEEP_REPO=repo, PREFECT_API_URL="")
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, env=env)


def test_linux01_restore_point_boots_and_its_file_systems_check_clean(
    vc_env: dict[str, Any], repo: str
) -> None:
    backed = _cli(
        "backup", "vm", "linux01", "--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"],
        "--json", repo=repo,
    )
    assert backed.returncode == 0, backed.stderr
    point = json.loads(backed.stdout)["id"]

    booted = _cli("verify", "boot", point, "--timeout", "540", "--json", repo=repo)
    assert booted.returncode == 0, booted.stderr + booted.stdout
    out = json.loads(booted.stdout)
    assert "linux01 login:" in out["serial_tail"]
    assert out["firmware"] == "bios"
    assert 0 < out["bytes_fetched"] < out["disk_bytes"] // 4

    checked = _cli("verify", "fs", point, "--json", repo=repo)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    results = {(v["volume"], v["fs"]): v["result"] for v in json.loads(checked.stdout)["volumes"]}
    assert results[("disk0-p1", "ext")] == "clean"
    assert results[("disk0-p2", "fat")] == "clean"

    listing = _cli("ls", point, repo=repo)
    assert "verify boot: passed" in listing.stdout and "verify fs: passed" in listing.stdout
    assert os.path.isdir(repo)
