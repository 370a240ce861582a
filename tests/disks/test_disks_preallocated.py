"""Space a program reserved with ``fallocate`` and has not written yet (databases, VM images and
logs do this) reads as zeros — as Linux reads it — on ext4, XFS and Btrfs, though its blocks
still hold what a deleted file left there.  Made by Linux itself in a QEMU guest
(:mod:`tests.disks.kernel_guest`): the volume filled with files of noise, which are deleted, then
8 MiB reserved with ``fallocate`` and four bytes written at its start, then the file system
frozen."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.disks.kernel_guest import run_guest
from vmkeep.disks.fs import open_filesystem

RESERVED = 8 << 20
PREALLOCATE = f"""  i=0
  while [ $i -lt 40 ] && cp /gone.bin /mnt/gone$i.bin 2>/dev/null; do i=$((i + 1)); done
  sync
  rm -f /mnt/gone*.bin
  sync
  fallocate -l {RESERVED} /mnt/reserved.bin
  printf head | dd of=/mnt/reserved.bin conv=notrunc 2>/dev/null
  sync"""


@pytest.mark.slow
@pytest.mark.parametrize("fs", ["ext4", "xfs", "btrfs"])
def test_reserved_space_reads_as_zeros(tmp_path: Path, fs: str) -> None:
    disk = run_guest(tmp_path, fs, freeze=True, script=PREALLOCATE)
    with open(disk, "rb") as fh:
        volume = open_filesystem(fh, "v")
        with volume.open("/reserved.bin") as f:
            data = f.read()
    assert len(data) == RESERVED
    assert data[:4] == b"head" and data[4:] == bytes(RESERVED - 4)
