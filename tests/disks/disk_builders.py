"""Build real test disks without loop devices: file-system images made by the mkfs tools, placed
into MBR / GPT / LVM2 disks written here with ``struct``."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

MiB = 1024 * 1024
SECTOR = 512


def run(*cmd: str | Path, **kw: object) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def make_tree(root: Path, symlinks: bool = True) -> dict[str, str]:
    """A small tree; returns {relative path: sha256} of its regular files."""
    rnd = random.Random(1234)
    files = {
        "hello.txt": b"hello world\n",
        "data/random.bin": rnd.randbytes(300 * 1024),
        "data/empty": b"",
        "deep/a/b/c/file.txt": b"deep file\n" * 100,
        "unicode \u00fcn\u00ef.txt": "gr\u00fc\u00dfe\n".encode(),
        "big/multi.bin": rnd.randbytes(1 * MiB + 123),
    }
    # enough entries for block/leaf/B-tree directory formats (ext htree, XFS leaf, NTFS index)
    files.update({f"many/file-with-a-longer-name-{i:03d}.txt": b"%d\n" % i for i in range(400)})
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (1_600_000_000, 1_600_000_000))
    if symlinks:
        (root / "link").symlink_to("hello.txt")
        (root / "dirlink").symlink_to("deep/a")
    return {rel: hashlib.sha256(d).hexdigest() for rel, d in files.items()}


def mkfs_ext4(src: Path, img: Path, size_mb: int = 16) -> None:
    run("mke2fs", "-q", "-F", "-t", "ext4", "-L", "vmkext", "-d", src, img, f"{size_mb}M")


def mkfs_btrfs(src: Path, img: Path, size_mb: int = 128) -> None:
    with open(img, "wb") as f:
        f.truncate(size_mb * MiB)
    run("mkfs.btrfs", "-q", "-f", "--rootdir", src, img)


def xfs_proto(src: Path) -> str:
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(d: Path, depth: int) -> None:
        for child in sorted(d.iterdir()):
            ind = " " * depth
            name = child.name
            if child.is_symlink():
                lines.append(f"{ind}{name} l--777 0 0 {os.readlink(child)}")
            elif child.is_dir():
                lines.append(f"{ind}{name} d--755 0 0")
                walk(child, depth + 1)
                lines.append(f"{ind}$")
            else:
                lines.append(f"{ind}{name} ---644 0 0 {child}")

    walk(src, 1)
    lines.append("$")
    return "\n".join(lines) + "\n"


def mkfs_xfs(src: Path, img: Path, size_mb: int = 300) -> None:
    proto = img.with_suffix(".proto")
    # xfs proto files split on whitespace: names with spaces cannot be expressed; skip them
    tmp = img.with_suffix(".src")
    shutil.copytree(src, tmp, symlinks=True)
    for p in list(tmp.rglob("* *")):
        p.unlink()
    proto.write_text(xfs_proto(tmp))
    with open(img, "wb") as f:
        f.truncate(size_mb * MiB)
    run("mkfs.xfs", "-q", "-f", "-p", proto, img)


def mkfs_fat32(src: Path, img: Path, size_mb: int = 40) -> None:
    run("mkfs.vfat", "-F", "32", "-n", "VMKFAT", "-C", img, str(size_mb * 1024))
    for child in src.iterdir():
        run("mcopy", "-s", "-m", "-i", img, child, "::/")


def mkfs_ntfs(src: Path, img: Path, mnt: Path, size_mb: int = 24,
              compressed: bool = False) -> None:
    """An NTFS image holding ``src``, written by ntfs-3g; ``compressed``: the root directory is
    marked compressed first, so every file is stored LZNT1-compressed by compression unit (as in
    a folder Windows users mark "compress contents")."""
    with open(img, "wb") as f:
        f.truncate(size_mb * MiB)
    run("mkntfs", "-q", "-F", "-Q", "-L", "vmkntfs", img)
    mnt.mkdir(exist_ok=True)
    run("ntfs-3g", *(["-o", "compression"] if compressed else []), img, mnt)
    try:
        if compressed:  # FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_COMPRESSED, inherited
            os.setxattr(mnt, "system.ntfs_attrib_be", (0x810).to_bytes(4, "big"))
        shutil.copytree(src, mnt, symlinks=False, dirs_exist_ok=True, ignore=_no_links(src))
        if (src / "hello.txt").exists():  # make_tree's tree
            os.setxattr(mnt / "hello.txt", "user.secret", b"alternate stream data\n")
        for link in (src / "link", src / "dirlink"):  # ntfs-3g writes Interix symlinks
            if link.is_symlink():
                (mnt / link.name).symlink_to(os.readlink(link))
    finally:
        run("fusermount3", "-u", mnt)


def mkfs_exfat(src: Path, img: Path, mnt: Path, size_mb: int = 16,
               then: Callable[[Path], None] | None = None) -> None:
    """An exFAT image holding ``src`` (links left out), written by exfat-fuse through a loop
    device (it mounts block devices only); ``then(mnt)`` may write more while it is mounted."""
    with open(img, "wb") as f:
        f.truncate(size_mb * MiB)
    run("mkfs.exfat", "-L", "vmkexfat", img)
    mnt.mkdir(exist_ok=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(img)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        run("mount.exfat-fuse", loop, mnt)
        try:
            shutil.copytree(src, mnt, symlinks=False, dirs_exist_ok=True, ignore=_no_links(src))
            if then is not None:
                then(mnt)
        finally:
            run("fusermount3", "-u", mnt)
    finally:
        run("losetup", "-d", loop)


def _no_links(src: Path):  # type: ignore[no-untyped-def]
    def ignore(d: str, names: list[str]) -> list[str]:
        return [n for n in names if os.path.islink(os.path.join(d, n))]

    return ignore


def place(disk: Path, offset: int, img: Path) -> None:
    """Copy ``img`` into ``disk`` at ``offset``, keeping holes."""
    with open(img, "rb") as src, open(disk, "r+b") as dst:
        pos = 0
        while chunk := src.read(MiB):
            if chunk.count(0) != len(chunk):
                dst.seek(offset + pos)
                dst.write(chunk)
            pos += len(chunk)


def write_mbr(disk: Path, parts: list[tuple[int, int, int]]) -> None:
    """parts: (type, start_lba, sectors)."""
    mbr = bytearray(512)
    for i, (ptype, start, count) in enumerate(parts):
        struct.pack_into(
            "<B3sB3sII", mbr, 446 + 16 * i, 0, b"\xff\xff\xff", ptype, b"\xff\xff\xff", start, count
        )
    mbr[510:512] = b"\x55\xaa"
    with open(disk, "r+b") as f:
        f.write(mbr)


LINUX_FS = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
LINUX_LVM = uuid.UUID("E6D6D379-F507-44C2-A23C-238F2A3DF928")
BASIC_DATA = uuid.UUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")


def write_gpt(disk: Path, parts: list[tuple[uuid.UUID, int, int, str]]) -> None:
    """parts: (type guid, first_lba, last_lba, name)."""
    total = disk.stat().st_size // SECTOR
    entries = bytearray(128 * 128)
    for i, (ptype, first, last, name) in enumerate(parts):
        struct.pack_into(
            "<16s16sQQQ72s",
            entries,
            128 * i,
            ptype.bytes_le,
            uuid.uuid4().bytes_le,
            first,
            last,
            0,
            name.encode("utf-16-le"),
        )
    ecrc = zlib.crc32(entries)

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        h = bytearray(
            struct.pack(
                "<8sIIIIQQQQ16sQIII",
                b"EFI PART",
                0x10000,
                92,
                0,
                0,
                current,
                backup,
                34,
                total - 34,
                uuid.uuid4().bytes_le,
                entries_lba,
                128,
                128,
                ecrc,
            )
        )
        struct.pack_into("<I", h, 16, zlib.crc32(h))
        return bytes(h).ljust(SECTOR, b"\0")

    write_mbr(disk, [(0xEE, 1, min(total - 1, 0xFFFFFFFF))])
    with open(disk, "r+b") as f:
        f.seek(SECTOR)
        f.write(header(1, total - 1, 2))
        f.write(entries)
        f.seek((total - 33) * SECTOR)
        f.write(entries)
        f.write(header(total - 1, 1, total - 33))


def write_lvm_pv(
    disk: Path, pv_offset: int, pv_size: int,
    lvs: dict[str, tuple[int, int] | list[tuple[int, int]]],
) -> int:
    """Write an LVM2 PV at ``pv_offset`` with one VG ``vg0`` and linear LVs {name: (start_pe,
    count)} of 1 MiB extents — or a list of such segments, in LV order (an LV extended by
    ``lvextend``); returns the byte offset (in the disk) where PE 0 starts."""
    pe_start = MiB
    pv_uuid = "abcdefABCDEF0123456789abcdefABCD"
    dashed = (
        f"{pv_uuid[:6]}-{pv_uuid[6:10]}-{pv_uuid[10:14]}-{pv_uuid[14:18]}-"
        f"{pv_uuid[18:22]}-{pv_uuid[22:26]}-{pv_uuid[26:]}"
    )
    lv_text = ""
    for i, (name, layout) in enumerate(lvs.items()):
        segments = layout if isinstance(layout, list) else [layout]
        seg_text, at = "", 0
        for j, (start, count) in enumerate(segments, 1):
            seg_text += f"""
segment{j} {{
start_extent = {at}
extent_count = {count}
type = "striped"
stripe_count = 1
stripes = [
"pv0", {start}
]
}}"""
            at += count
        lv_text += f"""
{name} {{
id = "lv{i:04d}-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = {len(segments)}{seg_text}
}}"""
    text = (
        f"""vg0 {{
id = "vgid00-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx"
seqno = 1
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = 2048
max_lv = 0
max_pv = 0
metadata_copies = 0
physical_volumes {{
pv0 {{
id = "{dashed}"
device = "/dev/vda2"
status = ["ALLOCATABLE"]
flags = []
dev_size = {pv_size // SECTOR}
pe_start = {pe_start // SECTOR}
pe_count = {(pv_size - pe_start) // MiB}
}}
}}
logical_volumes {{{lv_text}
}}
}}
contents = "Text Format Volume Group"
version = 1
description = ""
creation_host = "test"
creation_time = 1600000000
""".encode()
        + b"\0"
    )
    label = struct.pack("<8sQII8s", b"LABELONE", 1, 0, 32, b"LVM2 001")
    pvh = struct.pack("<32sQ", pv_uuid.encode(), pv_size)
    pvh += struct.pack("<QQQQ", pe_start, 0, 0, 0)  # data areas
    pvh += struct.pack("<QQQQ", 4096, pe_start - 4096, 0, 0)  # metadata areas
    mda = struct.pack("<I16sIQQ", 0, b" LVM2 x[5A%r0N*>", 1, 4096, pe_start - 4096)
    mda += struct.pack("<QQII", 512, len(text), 0, 0) + bytes(24)
    with open(disk, "r+b") as f:
        f.seek(pv_offset + SECTOR)
        f.write(label + pvh)
        f.seek(pv_offset + 4096)
        f.write(mda)
        f.seek(pv_offset + 4096 + 512)
        f.write(text)
    return pv_offset + pe_start


def new_disk(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def write_ebr(disk: Path, at: int, entries: list[tuple[int, int, int]]) -> None:
    """An extended boot record at byte ``at``: (type, start_lba, sectors) entries."""
    sector = bytearray(512)
    for i, (ptype, start, count) in enumerate(entries):
        struct.pack_into(
            "<B3sB3sII", sector, 446 + 16 * i, 0, b"\xff" * 3, ptype, b"\xff" * 3, start, count
        )
    sector[510:512] = b"\x55\xaa"
    with open(disk, "r+b") as f:
        f.seek(at)
        f.write(sector)


DIRECTORY_TOOLS = {"ext4": ["mke2fs", "debugfs"], "xfs": ["mkfs.xfs", "xfs_db"],
                   "fat32": ["mkfs.vfat", "mcopy"], "ntfs": ["mkntfs", "ntfs-3g"],
                   "exfat": ["mkfs.exfat", "mount.exfat-fuse", "losetup"]}


def _need(tools: list[str]) -> None:
    if any(shutil.which(t) is None for t in tools):
        from tests.missing import missing as tool_missing

        tool_missing(f"{tools} not installed")


def _ext4_with_directory(tree: Path, img: Path, directory: str, size: str) -> list[int]:
    """``mke2fs -d tree`` into ``img``; the blocks of ``directory``, in its order."""
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(tree),
                    str(img), size], check=True)
    out = subprocess.run(["debugfs", "-R", f"blocks {directory}", str(img)], check=True,
                         capture_output=True, text=True).stdout
    return [int(b) for b in out.split()]


def _xfs_with_directory(tree: Path, img: Path, directory: str) -> list[int]:
    """``mkfs_xfs`` of ``tree`` into ``img``; the blocks of ``directory``'s data segment."""
    mkfs_xfs(tree, img, 300)

    def db(*cmds: str) -> str:
        args = [a for c in cmds for a in ("-c", c)]
        return subprocess.run(["xfs_db", "-r", *args, str(img)], check=True,
                              capture_output=True, text=True).stdout

    agblocks = int(db("sb 0", "p agblocks").split("=")[1])
    blocks = []
    # each line: "data offset O startblock S (AG/AGBLOCK) count C"
    for line in db(f"path {directory}", "bmap").splitlines():
        words = line.replace("(", " ").replace(")", " ").replace("/", " ").split()
        if words[:2] == ["data", "offset"] and int(words[2]) < 1 << 23:  # the data segment
            ag, rel, count = int(words[5]), int(words[6]), int(words[8])
            blocks += [ag * agblocks + rel + k for k in range(count)]
    return blocks


def _overwrite(img: Path, offset: int, data: bytes) -> Path:
    with open(img, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return img


def overwritten_directory_image(tmp_path: Path, fstype: str, directory: str,
                                seed: int = 0) -> Path:
    """An ext4, XFS, FAT32, NTFS or exFAT image of ``good/`` and ``bad/`` (40 files each) whose
    ``directory``'s first block (NTFS: first index buffer) is then overwritten with random bytes
    (the same for one ``seed``), as other data written over it would."""
    _need(DIRECTORY_TOOLS[fstype])
    noise = random.Random(seed).randbytes
    tree = tmp_path / "tree"
    for name in ("good", "bad"):
        (tree / name).mkdir(parents=True)
        for i in range(40):  # XFS: more than fit in the inode (an extent-form directory)
            text = b"%s %d\n" % (name.encode(), i)
            (tree / name / f"a-longer-file-name-{i}.txt").write_bytes(text)
    img = tmp_path / f"{fstype}.img"
    if fstype == "ext4":
        return _overwrite(img, _ext4_with_directory(tree, img, directory, "8M")[0] * 4096,
                          noise(4096))
    if fstype == "xfs":
        return _overwrite(img, _xfs_with_directory(tree, img, directory)[0] * 4096, noise(4096))
    if fstype == "ntfs":
        from dissect.ntfs import ATTRIBUTE_TYPE_CODE, NTFS

        mkfs_ntfs(tree, img, tmp_path / "mnt")
        with open(img, "rb") as fh:
            ntfs = NTFS(fh)
            [allocation] = ntfs.mft.get(directory.strip("/")).attributes[
                ATTRIBUTE_TYPE_CODE.INDEX_ALLOCATION]
            offset = allocation.dataruns()[0][0] * ntfs.cluster_size
        return _overwrite(img, offset, noise(4096))  # the first index buffer
    if fstype == "exfat":
        from dissect.fat import ExFAT  # an independent reader locates the directory

        mkfs_exfat(tree, img, tmp_path / "mnt")
        with open(img, "rb") as fh:
            ex = ExFAT(fh)
            stream = ex.files["/"][1][directory.strip("/")][0].stream
            offset = ex.cluster_to_sector(stream.location) * ex.sector_size
            size = ex.cluster_size  # the directory's first cluster only
        return _overwrite(img, offset, noise(size))
    from dissect.fat import FATFS

    subprocess.run(["mkfs.vfat", "-C", "-F", "32", str(img), "40960"], check=True,
                   capture_output=True)
    subprocess.run(["mcopy", "-s", "-i", str(img), str(tree / "good"), str(tree / "bad"),
                    "::/"], check=True)
    with open(img, "rb") as fh:
        fat = FATFS(fh)
        offset = fat.first_data_sector * fat.sector_size
        offset += (fat.get(directory.strip("/")).cluster - 2) * fat.cluster_size
        size = fat.cluster_size  # the directory's first cluster only
    return _overwrite(img, offset, noise(size))


def overwritten_later_block_image(tmp_path: Path, fstype: str, seed: int = 0) -> Path:
    """An ext4 or XFS image whose ``/big`` (400 entries: several directory blocks) has its third
    data block overwritten with random bytes; ``/small`` (3 entries) is whole."""
    _need(DIRECTORY_TOOLS[fstype])
    tree = tmp_path / "tree"
    for name, count in (("big", 400), ("small", 3)):
        (tree / name).mkdir(parents=True)
        for i in range(count):
            (tree / name / f"a-longer-file-name-number-{i}.txt").write_bytes(b"%d\n" % i)
    img = tmp_path / f"{fstype}.img"
    if fstype == "ext4":
        blocks = _ext4_with_directory(tree, img, "/big", "16M")
    else:
        blocks = _xfs_with_directory(tree, img, "/big")
    return _overwrite(img, blocks[2] * 4096, random.Random(seed).randbytes(4096))


def assert_file_alone_is_lost(fs, target: Path, lost: str, match: str) -> None:  # type: ignore[no-untyped-def]
    """``lost`` (a file whose inode is damaged) is listed, cannot be opened (``match``), and a
    restore of the whole volume into ``target`` reports it alone as ``read-error``."""
    import pytest

    from vmkeep.disks.errors import FsDamagedError
    from vmkeep.disks.safe_restore import restore

    parent, name = lost.rsplit("/", 1)
    assert name in {e.name for e in fs.listdir(parent or "/")}
    with pytest.raises(FsDamagedError, match=match):
        fs.open(lost)
    target.mkdir()
    summary = restore(fs, target, "/")
    assert [(w.path, w.reason) for w in summary.skipped] == [(lost, "read-error")]
