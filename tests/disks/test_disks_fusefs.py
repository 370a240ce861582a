"""The FUSE tree: operations in-process, plus one real mount unmounted by SIGTERM."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vmkeep.disks.fusefs import DiskTree, TreeOps
from vmkeep.disks.vmdk import open_disk


@pytest.fixture(scope="module")
def tree(disks):
    return DiskTree(
        [
            ("gpt", open_disk(disks.vmdk_sparse)),
            ("mbr", open_disk(disks.mbr)),
            ("bt", open_disk(disks.btrfs)),
        ]
    )


def test_layout(tree):
    ops = TreeOps(tree)
    assert ops.readdir("/", 0) == [".", "..", "disks", "volumes"]
    assert ops.readdir("/disks", 0)[2:] == ["gpt.raw", "mbr.raw", "bt.raw"]
    vols = set(ops.readdir("/volumes", 0)[2:])
    assert {
        "gpt-p1",
        "gpt-p2",
        "gpt-vg0-lvext",
        "gpt-vg0-lvfat",
        "mbr-p1",
        "mbr-p2",
        "bt-whole",
    } <= vols
    assert ops.getattr("/disks/gpt.raw")["st_size"] == 400 * 1024 * 1024
    attrs = ops.getattr("/volumes/gpt-p1/hello.txt")
    assert attrs["st_size"] == 12 and attrs["st_mode"] & 0o222 == 0
    assert attrs["st_mtime"] == 1_600_000_000 * 10**9
    assert ops.readlink("/volumes/gpt-p1/link") == "hello.txt"
    with pytest.raises(OSError) as e:
        ops.getattr("/volumes/gpt-p1/nope")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        ops.open("/volumes/gpt-p1/hello.txt", os.O_WRONLY)
    assert e.value.errno == errno.EROFS


def test_reads(tree, disks):
    ops = TreeOps(tree)
    fh = ops.open("/volumes/gpt-vg0-lvext/big/multi.bin", os.O_RDONLY)
    data = b"".join(ops.read("", 128 * 1024, off, fh) for off in range(0, 1_200_000, 128 * 1024))
    ops.release("", fh)
    assert hashlib.sha256(data).hexdigest() == disks.hashes["big/multi.bin"]
    fh = ops.open("/disks/gpt.raw", os.O_RDONLY)
    assert ops.read("", 8, 512, fh) == b"EFI PART"
    assert ops.listxattr("/volumes/mbr-p1/hello.txt") == ["user.secret"]
    assert ops.getxattr("/volumes/mbr-p1/hello.txt", "user.secret") == b"alternate stream data\n"


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="needs FUSE")
def test_real_mount_unmounts_on_sigterm(disks, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = textwrap.dedent(f"""
        from vmkeep.disks.fusefs import DiskTree, mount
        from vmkeep.disks.vmdk import open_disk
        tree = DiskTree([("gpt", open_disk({str(disks.vmdk_stream)!r}))])
        mount(tree, {str(mnt)!r})
        print("clean exit", flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        target = mnt / "volumes/gpt-p1/hello.txt"
        for _ in range(100):
            if target.exists():
                break
            time.sleep(0.1)
        assert target.read_bytes() == b"hello world\n"
        assert os.readlink(mnt / "volumes/gpt-p2/link") == "hello.txt"
        with pytest.raises(OSError):
            (mnt / "volumes/gpt-p1/new").write_text("x")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert proc.returncode == 0 and "clean exit" in out
    assert not os.path.ismount(mnt)
    assert list(Path(mnt).iterdir()) == []
