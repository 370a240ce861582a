"""``vmkeep mount``: raw disks and browsable volumes over FUSE, read-only, clean Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.restore.restore_helpers import VMKEEP, sha256


def wait_mounted(path: str, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """Poll for the mount to appear; the deadline only stops a hung test, it measures nothing."""
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc.poll() is not None:
            pytest.fail(f"mount exited early: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mount did not appear")
        time.sleep(0.05)


def wait_stopped(proc: subprocess.Popen[str], mnt: object) -> None:
    """Wait for a mount told to stop; a hung one (not a slow one) is killed and lazily
    unmounted, and the test fails."""
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        raise


def assert_unmounted_cleanly(proc: subprocess.Popen[str], mnt: Path) -> None:
    """Exit 0, "unmounted", no traceback, nothing mounted and the folder it made gone."""
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "unmounted" in stderr
    assert not os.path.ismount(mnt)
    assert not mnt.exists()  # created for the mount, removed with it


def stop(how: str, proc: subprocess.Popen[str], mnt: object) -> None:
    if how == "fusermount3 -u":
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    else:
        proc.send_signal(getattr(signal, how))


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "fusermount3 -u"])
def test_mount_disks_and_volumes_then_stop(backed, tmp_path, how):
    """Ctrl-C (SIGINT), SIGTERM or an outside unmount: exit 0, 'unmounted', no traceback."""
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
        assert sha256(mnt / "disks/disk0.raw") == sha256(backed.images["mbr"])
        for vol in ("disk0-p1", "disk0-p2"):
            data = (mnt / "volumes" / vol / "data/random.bin").read_bytes()
            assert hashlib.sha256(data).hexdigest() == backed.hashes["data/random.bin"]
        ntfs_hello = mnt / "volumes/disk0-p1/hello.txt"
        assert os.getxattr(ntfs_hello, "user.secret") == b"alternate stream data\n"
        assert os.readlink(mnt / "volumes/disk0-p1/link") == "hello.txt"
        with pytest.raises(OSError):
            open(ntfs_hello, "r+b")  # noqa: SIM115 - read-only mount
    finally:
        stop(how, proc, mnt)
        wait_stopped(proc, mnt)
    assert_unmounted_cleanly(proc, mnt)


def test_a_refused_mount_leaves_no_folder_behind(backed, tmp_path):
    mnt = tmp_path / "new" / "mnt"
    res = mount_cli(["nothing@latest", str(mnt)], backed.repo)
    assert res.returncode == 14, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "new").exists()


def mount_cli(args: list[str], repo: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(repo))
    return subprocess.run(
        [*VMKEEP, "mount", *args], env=env, text=True, capture_output=True, timeout=600
    )


@pytest.mark.parametrize("kind", ["file", "non-empty", "inside the repository"])
def test_mount_on_a_bad_folder_is_one_line_exit_14(backed, tmp_path, kind):
    """A folder inside the repository was taken (created there, and walked by every listing of
    the repository while mounted)."""
    mnt = tmp_path / "mnt"
    if kind == "file":
        mnt.write_text("x")
    elif kind == "non-empty":
        mnt.mkdir()
        (mnt / "keep.txt").write_text("x")
    else:
        mnt = Path(backed.repo) / "browse"
    before = sorted(os.listdir(backed.repo))
    res = mount_cli(["mbr@latest", str(mnt)], backed.repo)
    assert res.returncode == 14, res.stderr
    assert "Traceback" not in res.stderr
    assert f"Cannot mount on {mnt}" in res.stderr
    assert not os.path.ismount(mnt)
    assert sorted(os.listdir(backed.repo)) == before


@pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs FUSE, root and unshare",
)
def test_mount_the_kernel_refuses_is_one_line_exit_19(backed, tmp_path):
    """/dev/fuse is /dev/null in a private mount namespace: libfuse's mount fails."""
    mnt = tmp_path / "mnt"
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(backed.repo))
    res = subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private", "sh", "-c"),
            'mount --bind /dev/null /dev/fuse && exec "$@"',
            "sh",
            *VMKEEP,
            *("mount", "mbr@latest", str(mnt)),
        ],
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert res.returncode == 19, res.stderr
    assert "Traceback" not in res.stderr
    assert f"FUSE mount on {mnt} failed" in res.stderr
    assert not os.path.ismount(mnt)
