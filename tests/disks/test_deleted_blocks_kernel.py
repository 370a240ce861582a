"""Deleted blocks on ext4 as Linux itself leaves it: a QEMU guest (:mod:`tests.disks.kernel_guest`:
Debian's kernel, a busybox initramfs) mounts an ext4 disk, writes two files, deletes one, and
then either freezes the file system — what VMware Tools' quiescing does in a Linux guest before
the snapshot — or not, and powers off at once (the disk then holds what a snapshot taken at that
moment would).

Frozen: the journal has nothing to replay, every checksum and free count agrees, and the deleted
file's blocks are found free while the kept file's are not.  Not frozen (a crash-consistent
state): the journal still needs recovery, so the volume is read as usual.  What mke2fs and
debugfs make (test_deleted_blocks_ext.py) is checked here against the kernel's own ext4."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.disks.deleted_helpers import scan_file
from tests.disks.kernel_guest import GONE, KEEP, MiB, deleted, kept, run_guest
from vmkeep.disks.deleted_blocks import DeletedScan

pytestmark = pytest.mark.slow


def assert_deleted_free_and_kept_used(disk: Path, found: DeletedScan) -> None:
    """Each MiB of the deleted file lies in a found area; no byte of the kept file does."""
    data = disk.read_bytes()
    gone = deleted()
    for at in range(MiB // 2, GONE, MiB):  # a block in the middle of each MiB of the file
        where = data.find(gone[at:at + 4096])
        assert where >= 0, at  # the deleted bytes are on the disk …
        assert any(a.offset <= where < a.offset + a.length for a in found.areas), at  # … free
    keep_at = data.find(kept()[:4096])
    assert keep_at >= 0
    assert not any(a.offset < keep_at + KEEP and keep_at < a.offset + a.length
                   for a in found.areas)


def test_a_frozen_ext4_shows_the_deleted_file_free_and_the_kept_one_in_use(
    tmp_path: Path,
) -> None:
    disk = run_guest(tmp_path, "ext4", freeze=True)
    checked = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # clean as frozen
    found = scan_file(disk)
    assert found.notes == []
    assert_deleted_free_and_kept_used(disk, found)


def test_an_ext4_left_mounted_is_read_as_usual(tmp_path: Path) -> None:
    disk = run_guest(tmp_path, "ext4", freeze=False)
    found = scan_file(disk)
    assert found.areas == []
    assert found.notes == ["whole: its journal needs recovery (neither frozen nor cleanly "
                           "unmounted): free space read as usual"]
