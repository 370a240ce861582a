"""``vmkeep mount``: raw disks and browsable volumes over FUSE, read-only, clean Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import pytest

from tests.restore.restore_helpers import VMKEEP, sha256


def wait_mounted(path: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc.poll() is not None:
            pytest.fail(f"mount exited early: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mount did not appear")
        time.sleep(0.1)


def test_mount_disks_and_volumes_then_ctrl_c(backed, tmp_path):
    mnt = tmp_path / "mnt"
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(backed.repo))
    proc = subprocess.Popen(
        [*VMKEEP, "mount", "mbr@latest", str(mnt)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_mounted(str(mnt), proc)
        assert sorted(os.listdir(mnt)) == ["disks", "volumes"]
        assert os.listdir(mnt / "disks") == ["disk0.raw"]
        assert sorted(os.listdir(mnt / "volumes")) == ["disk0-p1", "disk0-p2"]
        assert sha256(mnt / "vmkeep/disks/disk0.raw") == sha256(backed.images["mbr"])
        for vol in ("disk0-p1", "disk0-p2"):
            data = (mnt / "volumes" / vol / "data/random.bin").read_bytes()
            assert hashlib.sha256(data).hexdigest() == backed.hashes["data/random.bin"]
        ntfs_hello = mnt / "volumes/disk0-p1/hello.txt"
        assert os.getxattr(ntfs_hello, "user.secret") == b"alternate stream data\n"
        assert os.readlink(mnt / "volumes/disk0-p1/link") == "hello.txt"
        with pytest.raises(OSError):
            open(ntfs_hello, "r+b")  # noqa: SIM115 - read-only mount
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            raise
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "unmounted" in stderr
    assert not os.path.ismount(mnt)
