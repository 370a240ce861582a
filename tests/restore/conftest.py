"""Real test disks made by the mkfs tools, backed up once per session through the CLI.

- ``gpt``   GPT: p1 ext4 (16 MiB), p2 XFS (300 MiB, sparse)
- ``mbr``   MBR: p1 NTFS (alternate data stream on hello.txt), p2 FAT32
- ``btrfs`` a bare Btrfs
- ``vmdk``  ``gpt`` converted by qemu-img (monolithicSparse)
- ``evil``  a bare ext4 crafted with debugfs and byte patches: ``..``/``/``/``\\`` names,
  links pointing out, fifo and device nodes, a set-uid file, a 1 TiB sparse file

Each is backed up with ``vmkeep backup image`` (direct mode; ``gpt`` in a subprocess) into one
repository with 64 KiB chunks; ``backed.points`` maps the names above to restore point ids.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.missing import missing as tool_missing
from tests.restore.restore_helpers import vmkeep, vmkeep_json

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
    "debugfs",
]
M = b.MiB


@dataclass
class Backed:
    repo: Path
    root: Path
    tree: Path
    hashes: dict[str, str]
    images: dict[str, Path]
    points: dict[str, str]


def make_evil(d: Path) -> Path:
    src = d / "evil-src"
    src.mkdir()
    (src / "hello.txt").write_text("hi\n")
    (src / "EVILDOTDOT").write_text("pwn\n")
    (src / "SLASHNAME").write_text("slash\n")
    (src / "suid").write_text("#!/bin/sh\n")
    img = d / "evil.img"
    b.run(
        "mke2fs", "-q", "-F", "-t", "ext4", "-O", "^metadata_csum,^dir_index", "-d", src, img, "8M"
    )
    script = d / "cmds"
    script.write_text(
        "\n".join(
            [
                "symlink evil /etc/passwd",
                "symlink up ../../../../../../tmp",
                "mknod fifo p",
                "mknod dev c 1 3",
                "write /dev/null sparse",
                "sif sparse size 0x10000000000",
                "sif suid mode 0104755",
            ]
        )
        + "\n"
    )
    b.run("debugfs", "-w", "-f", script, img)
    data = bytearray(img.read_bytes())
    for old, new in [(b"EVILDOTDOT", b"../../x.sh"), (b"SLASHNAME", b"sub/../x9")]:
        assert data.count(old) == 1, old
        at = data.index(old)
        data[at : at + len(old)] = new
    img.write_bytes(bytes(data))
    return img


@pytest.fixture(scope="session")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Backed:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        tool_missing(f"missing tools: {missing} (see .ci/apt-packages)")
    root = tmp_path_factory.mktemp("restore-disks")
    tree = root / "tree"
    tree.mkdir()
    hashes = b.make_tree(tree)
    ext4, xfs, ntfs, fat = (root / n for n in ("ext4.fs", "xfs.fs", "ntfs.fs", "fat.fs"))
    b.mkfs_ext4(tree, ext4, 16)
    b.mkfs_xfs(tree, xfs, 300)
    b.mkfs_ntfs(tree, ntfs, root / "mnt", 24)
    b.mkfs_fat32(tree, fat, 40)
    gpt = b.new_disk(root / "gpt.img", 320 * M)
    b.write_gpt(
        gpt,
        [
            (b.LINUX_FS, 2048, 2048 + 16 * 2048 - 1, "root"),
            (b.LINUX_FS, 17 * 2048, 17 * 2048 + 300 * 2048 - 1, "data"),
        ],
    )
    b.place(gpt, 1 * M, ext4)
    b.place(gpt, 17 * M, xfs)
    mbr = b.new_disk(root / "mbr.img", 72 * M)
    b.write_mbr(mbr, [(0x07, 2048, 24 * 2048), (0x0C, 25 * 2048, 40 * 2048)])
    b.place(mbr, 1 * M, ntfs)
    b.place(mbr, 25 * M, fat)
    btrfs = root / "btrfs.img"
    b.mkfs_btrfs(tree, btrfs, 128)
    vmdk = root / "gpt.vmdk"
    b.run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", gpt, vmdk)
    evil = make_evil(root)
    for fs_img in (ext4, xfs, ntfs, fat):
        fs_img.unlink()

    repo = root / "repo"
    vmkeep_json("init", "--chunk-size", "64", repo=repo)
    images = {"gpt": gpt, "mbr": mbr, "btrfs": btrfs, "vmdk": vmdk, "evil": evil}
    points = {}
    for name, path in images.items():
        if name == "gpt":  # once through a real subprocess, the rest in-process (same main())
            proc = vmkeep("backup", "image", str(path), "--name", name, "--json", repo=repo)
            assert proc.returncode == 0, proc.stderr
            points[name] = json.loads(proc.stdout)["id"]
        else:
            out = vmkeep_json("backup", "image", str(path), "--name", name, repo=repo)
            points[name] = out["id"]
    return Backed(repo, root, tree, hashes, images, points)
