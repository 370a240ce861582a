"""Session-scoped real test disks, built once with the mkfs tools (no loop devices).

- ``gpt.img``  GPT: p1 ext4, p2 XFS, p3 LVM2 PV (vg0/lvext = ext4, vg0/lvfat = FAT32)
- ``mbr.img``  MBR: p1 NTFS (with an alternate data stream), p2 FAT32, p3 exFAT (empty)
- ``btrfs.img`` a bare Btrfs without a partition table
- VMDKs of ``gpt.img`` by qemu-img: monolithicSparse, streamOptimized, monolithicFlat
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.missing import missing as tool_missing

TOOLS = [
    "mke2fs",
    "mkfs.xfs",
    "mkfs.btrfs",
    "mkntfs",
    "ntfs-3g",
    "mkfs.vfat",
    "mcopy",
    "qemu-img",
    "fusermount3",
]


@dataclass
class Disks:
    root: Path
    tree: Path
    hashes: dict[str, str]
    gpt: Path
    mbr: Path
    btrfs: Path
    lvm_lvext_offset: int
    vmdk_sparse: Path
    vmdk_stream: Path
    vmdk_flat: Path


def _need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        tool_missing(f"missing tools: {missing} (see .ci/apt-packages)")


@pytest.fixture(scope="session")
def disks(tmp_path_factory: pytest.TempPathFactory) -> Disks:
    _need_tools()
    root = tmp_path_factory.mktemp("disks")
    tree = root / "tree"
    tree.mkdir()
    hashes = b.make_tree(tree)
    M = b.MiB

    ext4, xfs, fat, fat2, ntfs, exfat, btrfs_img = (
        root / n
        for n in ("ext4.fs", "xfs.fs", "fat.fs", "fat2.fs", "ntfs.fs", "exfat.fs", "btrfs.img")
    )
    b.mkfs_ext4(tree, ext4, 16)
    b.mkfs_xfs(tree, xfs, 300)
    b.mkfs_fat32(tree, fat, 40)
    b.mkfs_fat32(tree, fat2, 36)
    b.mkfs_ntfs(tree, ntfs, root / "mnt", 24)
    b.mkfs_btrfs(tree, btrfs_img, 128)

    # GPT: p1 ext4 @1MiB (16M), p2 xfs @17MiB (300M), p3 LVM PV @317MiB (64M)
    gpt = b.new_disk(root / "gpt.img", 400 * M)
    b.write_gpt(
        gpt,
        [
            (b.LINUX_FS, 2048, 2048 + 16 * 2048 - 1, "root"),
            (b.LINUX_FS, 17 * 2048, 17 * 2048 + 300 * 2048 - 1, "data"),
            (b.LINUX_LVM, 317 * 2048, 317 * 2048 + 64 * 2048 - 1, "lvm"),
        ],
    )
    b.place(gpt, 1 * M, ext4)
    b.place(gpt, 17 * M, xfs)
    pe0 = b.write_lvm_pv(gpt, 317 * M, 64 * M, {"lvext": (0, 16), "lvfat": (16, 36)})
    b.place(gpt, pe0, ext4)
    b.place(gpt, pe0 + 16 * M, fat2)

    # MBR: p1 ntfs @1MiB (24M), p2 fat32 @25MiB (40M), p3 exfat @65MiB (16M, empty)
    mbr = b.new_disk(root / "mbr.img", 96 * M)
    b.write_mbr(
        mbr, [(0x07, 2048, 24 * 2048), (0x0C, 25 * 2048, 40 * 2048), (0x07, 65 * 2048, 16 * 2048)]
    )
    b.place(mbr, 1 * M, ntfs)
    b.place(mbr, 25 * M, fat)
    if shutil.which("mkfs.exfat"):
        with open(exfat, "wb") as f:
            f.truncate(16 * M)
        b.run("mkfs.exfat", "-L", "vmkexfat", exfat)
        b.place(mbr, 65 * M, exfat)

    vmdk_sparse, vmdk_stream, vmdk_flat = root / "s.vmdk", root / "so.vmdk", root / "flat.vmdk"
    b.run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", gpt, vmdk_sparse)
    b.run(
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        gpt,
        vmdk_stream,
    )
    b.run(
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        gpt,
        vmdk_flat,
    )
    for fs_img in (ext4, xfs, fat, fat2, ntfs, exfat):
        fs_img.unlink(missing_ok=True)
    return Disks(root, tree, hashes, gpt, mbr, btrfs_img, pe0, vmdk_sparse, vmdk_stream, vmdk_flat)
