"""A volume whose ext, XFS or Btrfs superblock is gone or damaged is read through a backup copy,
as ``e2fsck -b``, ``xfs_repair`` and ``btrfs rescue super-recover`` would repair it: ext's backup
in block group 1, XFS's secondary in allocation group 1, Btrfs's mirror at 64 MiB; with a
warning.  Real file systems (mke2fs, mkfs.xfs, mkfs.btrfs) damaged by real tools (``wipefs``)
or by overwritten bytes, on partitions, whole disks and LVM logical volumes."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from vmkeep.disks.backup_superblock import from_backup, primary_damaged
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.vmdk.opener import open_disk
from vmkeep.disks.volumes import VolumeList, list_volumes

M = b.MiB
START = 2048  # the partition's first LBA
REPORT = b"quarterly\n" * 1000

#: fs → (mkfs size in MiB, where the primary superblock is, its length)
LAYOUTS = {
    "ext-1k": (16, 1024, 1024),  # mke2fs's "small" type: 1 KiB blocks, backup at block 8193
    "ext-4k": (600, 1024, 1024),  # 4 KiB blocks, backup at block 32768 (128 MiB)
    "xfs": (300, 0, 512),
    "btrfs": (200, 64 * 1024, 4096),
}


def _fs_image(tmp: Path, layout: str) -> Path:
    src = tmp / "src"
    (src / "docs").mkdir(parents=True, exist_ok=True)
    (src / "docs" / "report.txt").write_bytes(REPORT)
    img = tmp / f"{layout}.fs"
    size_mb = LAYOUTS[layout][0]
    if layout.startswith("ext"):
        b._need(["mke2fs"])
        with open(img, "wb") as f:
            f.truncate(size_mb * M)
        b.run("mke2fs", "-q", "-F", "-t", "ext4", "-d", src, img)
    elif layout == "xfs":
        b._need(["mkfs.xfs"])
        b.mkfs_xfs(src, img, size_mb)
    else:
        b._need(["mkfs.btrfs"])
        b.mkfs_btrfs(src, img, size_mb)
    return img


def _damage(img: Path, layout: str, how: str) -> None:
    """Damage the file-system image ``img`` as ``how`` says."""
    _, at, length = LAYOUTS[layout]
    if how == "wipefs":  # what `wipefs -a` does to a device: the primary's magic erased
        b.run("wipefs", "-a", "-f", img)
        return
    with open(img, "r+b") as f:
        if how == "zeroed":  # the superblock overwritten (ext: the first 64 KiB, descriptors too)
            f.seek(0 if layout.startswith("ext") else at)
            f.write(bytes(64 * 1024 if layout.startswith("ext") else length))
        else:  # "bit": one flipped bit in a field no magic check looks at
            f.seek(at + 0x100)
            byte = f.read(1)
            f.seek(at + 0x100)
            f.write(bytes([byte[0] ^ 0x10]))


def _partitioned(tmp: Path, img: Path) -> Path:
    size = img.stat().st_size
    disk = b.new_disk(tmp / "disk.img", START * 512 + size + 2 * M)
    b.write_gpt(disk, [(b.BASIC_DATA, START, START + size // 512 - 1, "data")])
    b.place(disk, START * 512, img)
    return disk


def _read_report(vols: VolumeList, fs: str) -> None:
    assert [v.fs for v in vols] == [fs]
    fsys = open_filesystem(vols[0].open(), vols[0].name)
    with fsys.open("/docs/report.txt") as f:
        assert f.read() == REPORT


@pytest.mark.parametrize("how", ["wipefs", "zeroed", "bit"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_damaged_superblock_is_read_from_its_backup(tmp_path: Path, layout: str,
                                                     how: str) -> None:
    fs = layout.split("-")[0]
    img = _fs_image(tmp_path, layout)
    with open_disk(_partitioned(tmp_path, img)) as d:
        before = list_volumes(d)
        assert before.warnings == []
        _read_report(before, fs)
    _damage(img, layout, how)
    with open_disk(_partitioned(tmp_path, img)) as d:
        vols = list_volumes(d)
        assert len(vols.warnings) == 1, vols.warnings
        assert f"partition p1: its {fs} superblock is damaged; read through the " in (
            vols.warnings[0])
        _read_report(vols, fs)


def test_a_whole_disk_file_system_is_read_from_its_backup(tmp_path: Path) -> None:
    img = _fs_image(tmp_path, "ext-1k")  # a bare file system, no partition table
    _damage(img, "ext-1k", "zeroed")
    with open_disk(img) as d:
        vols = list_volumes(d)
        assert vols.warnings == ["disk: the whole disk: its ext superblock is damaged; read "
                                 "through the backup superblock of block group 1 (block 8193)"]
        assert [v.name for v in vols] == ["whole"]
        _read_report(vols, "ext")


def test_a_logical_volume_is_read_from_its_backup(tmp_path: Path) -> None:
    img = _fs_image(tmp_path, "xfs")
    size = img.stat().st_size
    pv_size = size + 8 * M
    disk = b.new_disk(tmp_path / "lvm.img", START * 512 + pv_size + 2 * M)
    b.write_gpt(disk, [(b.LINUX_LVM, START, START + pv_size // 512 - 1, "pv")])
    data_start = b.write_lvm_pv(disk, START * 512, pv_size, {"root": (0, size // M)})
    _damage(img, "xfs", "wipefs")
    b.place(disk, data_start, img)
    with open_disk(disk) as d:
        vols = list_volumes(d)
        lv = [v for v in vols if v.kind == "lvm"]
        assert [(v.name, v.fs) for v in lv] == [("vg0/root", "xfs")]
        assert [w for w in vols.warnings if "vg0/root: its xfs superblock is damaged" in w]
        fsys = open_filesystem(lv[0].open(), lv[0].name)
        with fsys.open("/docs/report.txt") as f:
            assert f.read() == REPORT


def test_without_a_backup_the_volume_stays_unknown(tmp_path: Path) -> None:
    img = _fs_image(tmp_path, "btrfs")
    _damage(img, "btrfs", "zeroed")
    with open(img, "r+b") as f:
        f.seek(64 * M)
        f.write(bytes(4096))  # the mirror too
    with open_disk(_partitioned(tmp_path, img)) as d:
        vols = list_volumes(d)
    assert [(v.name, v.fs) for v in vols] == [("p1", None)] and vols.warnings == []


def test_a_damaged_primary_without_a_backup_is_read_as_it_is_with_a_warning(
        tmp_path: Path) -> None:
    img = _fs_image(tmp_path, "btrfs")
    with open(img, "r+b") as f:
        f.seek(64 * M)
        f.write(bytes(4096))  # no mirror
    _damage(img, "btrfs", "bit")  # a byte of the primary's unused tail: it still reads
    with open_disk(_partitioned(tmp_path, img)) as d:
        vols = list_volumes(d)
        assert vols.warnings == ["disk: partition p1: its btrfs superblock fails its checks and "
                                 "no backup copy holds; read as it is"]
        _read_report(vols, "btrfs")


@pytest.mark.parametrize("size_mb", [300, 1024, 5000])
def test_xfs_secondaries_are_found_without_ag0s_headers(tmp_path: Path, size_mb: int) -> None:
    """With AG 0's first 4 KiB gone (superblock, AGF, AGI), AG 1 is found from mkfs.xfs's default
    geometry for the volume's size; the find is exact (its own AG size puts it there)."""
    b._need(["mkfs.xfs", "xfs_db"])
    img = tmp_path / "x.img"
    with open(img, "wb") as f:
        f.truncate(size_mb * M)
    b.run("mkfs.xfs", "-q", "-f", img)
    out = subprocess.run(["xfs_db", "-r", "-c", "sb 0", "-c", "p agblocks blocksize", str(img)],
                         check=True, capture_output=True, text=True).stdout
    fields = dict(line.split(" = ") for line in out.splitlines())
    ag1 = int(fields["agblocks"]) * int(fields["blocksize"])
    with open(img, "r+b") as f:
        f.write(bytes(4096))
    with open(img, "rb") as f:
        assert primary_damaged(f, "xfs")
        found = from_backup(f, size_mb * M, "xfs")
    assert found is not None and found.fs == "xfs"
    assert found.which == f"the secondary superblock of allocation group 1 (byte {ag1})"
    ((at, sector),) = found.patches
    assert at == 0 and sector[:4] == b"XFSB" and struct.unpack_from(">I", sector, 84)[0] * int(
        fields["blocksize"]) == ag1


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_healthy_primary_is_not_called_damaged(tmp_path: Path, layout: str) -> None:
    img = _fs_image(tmp_path, layout)
    with open(img, "rb") as f:
        assert not primary_damaged(f, layout.split("-")[0])


def test_a_hostile_backup_superblock_reads_nothing_past_the_volume(tmp_path: Path) -> None:
    """Guest data: a backup superblock (valid checksum) claiming 2^64 blocks and 64 KiB group
    descriptors gets no descriptor patch — nothing is read for them — instead of a read of
    petabytes."""
    from vmkeep.disks.fs.ext import MASK, crc32c_raw

    img = _fs_image(tmp_path, "ext-1k")
    _damage(img, "ext-1k", "zeroed")
    at = (1 + 8192) * 1024  # group 1's backup superblock (1 KiB blocks)
    with open(img, "r+b") as f:
        f.seek(at)
        sb = bytearray(f.read(1024))
        struct.pack_into("<I", sb, 0x60, struct.unpack_from("<I", sb, 0x60)[0] | 0x80)  # 64bit
        struct.pack_into("<I", sb, 0x150, 0xFFFFFFFF)  # s_blocks_count_hi
        struct.pack_into("<H", sb, 0xFE, 0xFFFF)  # s_desc_size
        struct.pack_into("<I", sb, 0x3FC, crc32c_raw(MASK, bytes(sb[:0x3FC])))
        f.seek(at)
        f.write(sb)
    with open(img, "rb") as f:
        found = from_backup(f, img.stat().st_size, "ext")
    assert found is not None and [at for at, _ in found.patches] == [1024]
