"""#24.2: a real ``vmkeep mount`` of a point keeps every read succeeding while prune repacks the
repository underneath it (its reader lease holds the superseded packs); the next prune, after
the mount ended, deletes them."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, scribble, write_image
from vmkeep.storage.checker import check_repository
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

VMKEEP = [sys.executable, "-m", "vmkeep.cli"]


def test_mount_reads_survive_a_full_repack(tmp_path: Path) -> None:
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("FUSE is not available")
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024, pack_size=256 << 10)
    img = write_image(tmp_path / "a.img", size=3 << 20, seed=11)
    first, _ = backup(repo, img)
    scribble(img, [(0, 600_000), (1_500_000, 400_000)], seed=12)
    kept, _ = backup(repo, img)
    forget_ids(repo, [first.id])
    repo.close()
    expected = img.read_bytes()
    mnt = tmp_path / "mnt"
    env = dict(
        os.environ, VMKEEP_REPO=str(tmp_path / "repo"), PREFECT_API_URL=""
    )
    proc = subprocess.Popen(
        [*VMKEEP, "mount", kept.id, str(mnt)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        raw = None
        deadline = time.monotonic() + 300  # until the mount is up; only stops a hang
        while time.monotonic() < deadline:
            found = list((mnt / "disks").glob("*.raw")) if os.path.ismount(mnt) else []
            if found:
                raw = found[0]
                break
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        assert raw is not None, proc.stdout.read() if proc.stdout else ""
        with open(raw, "rb") as f:
            assert f.read(65536) == expected[:65536]  # the mount has loaded the index
        report = prune(
            Repository.open(str(tmp_path / "repo")), grace=timedelta(0), repack_below=0.9
        )
        assert report.packs_repacked > 0 and report.packs_held_by_leases > 0
        assert any("read" in h for h in report.held_by)
        digest = hashlib.sha256()
        with open(raw, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()  # every read succeeded
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=300)  # a hang guard
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    after = prune(Repository.open(str(tmp_path / "repo")), grace=timedelta(0), repack_below=0.9)
    assert after.packs_deleted >= report.packs_held_by_leases
    fresh = Repository.open(str(tmp_path / "repo"))
    assert check_repository(fresh, read_data=True).ok
