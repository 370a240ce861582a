"""A partition whose boot sector was overwritten is read through its backup boot sector, as
chkdsk, ntfsfix, fsck.fat and fsck.exfat would repair it: NTFS (last sector), FAT32 (sector 6),
exFAT (the backup boot region); with a warning.  Without a backup it stays a volume of no
known file system."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.vmdk.opener import open_disk
from vmkeep.disks.volumes import list_volumes

M = b.MiB
START = 2048  # the partition's first LBA


def _volume_image(tmp: Path, fs: str) -> Path:
    src = tmp / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "report.txt").write_text("quarterly\n")
    img = tmp / f"{fs}.fs"
    if fs == "ntfs":
        b._need(b.DIRECTORY_TOOLS["ntfs"])
        b.mkfs_ntfs(src, img, tmp / "mnt", size_mb=24)
    elif fs == "exfat":
        b._need(b.DIRECTORY_TOOLS["exfat"])
        b.mkfs_exfat(src, img, tmp / "mnt", size_mb=24)
    else:
        b._need(b.DIRECTORY_TOOLS["fat32"])
        subprocess.run(["mkfs.vfat", "-C", "-F", "32", str(img), str(40 * 1024)], check=True,
                       capture_output=True)
        subprocess.run(["mcopy", "-s", "-i", str(img), str(src / "docs"), "::/"], check=True)
    return img


def _disk(tmp: Path, fs: str) -> tuple[Path, int]:
    img = _volume_image(tmp, fs)
    size = img.stat().st_size
    disk = b.new_disk(tmp / "disk.img", (START * 512 + size + 2 * M))
    b.write_gpt(disk, [(b.BASIC_DATA, START, START + size // 512 - 1, "data")])
    b.place(disk, START * 512, img)
    return disk, size


@pytest.mark.parametrize("fs", ["ntfs", "fat", "exfat"])
def test_an_overwritten_boot_sector_is_read_from_its_backup(tmp_path: Path, fs: str) -> None:
    disk, _ = _disk(tmp_path, fs)
    with open_disk(disk) as d:
        before = list_volumes(d)
    assert [(v.name, v.fs) for v in before] == [("p1", fs)] and before.warnings == []
    with open(disk, "r+b") as f:  # a guest tool wrote over the volume's first sector
        f.seek(START * 512)
        f.write(bytes(512))
    with open_disk(disk) as d:
        vols = list_volumes(d)
        assert [(v.name, v.fs) for v in vols] == [("p1", fs)]
        assert len(vols.warnings) == 1 and "boot sector is damaged; read through the backup" \
            in vols.warnings[0]
        fsys = open_filesystem(vols[0].open(), "p1")
        with fsys.open("/docs/report.txt") as f:
            assert f.read() == b"quarterly\n"


def test_without_a_backup_the_volume_stays_unknown(tmp_path: Path) -> None:
    disk, size = _disk(tmp_path, "ntfs")
    with open(disk, "r+b") as f:
        f.seek(START * 512)
        f.write(bytes(512))
        f.seek(START * 512 + size - 512)
        f.write(bytes(512))  # the backup too
    with open_disk(disk) as d:
        vols = list_volumes(d)
    assert [(v.name, v.fs) for v in vols] == [("p1", None)] and vols.warnings == []
