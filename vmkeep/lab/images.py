"""Guest disk images with real content, built with Debian tools and cached by a content key.

Recipes (deterministic; the cache key hashes the recipe and :data:`RECIPE_VERSION`):

* ``linux-system``: GPT, an ext4 partition (``mke2fs -d``) holding a small Linux tree, and a FAT
  boot partition at the end with SYSLINUX, Debian's kernel and a busybox initramfs: the disk
  boots to a login prompt (:mod:`vmkeep.lab.bootable`);
* ``linux-data``: GPT, one ext4 partition with application data;
* ``windows-system``: MBR, NTFS (``mkntfs`` + ``ntfscp`` or an ``ntfs-3g`` mount) then FAT
  (``mkfs.vfat`` + ``mcopy``);
* ``tiny-linux``: GPT + a few MiB of ext4 for the many small VMs;
* ``raw-data``: no partition table, seeded random data (independent disks);
* ``bootable-linux``: MBR, a FAT boot partition with SYSLINUX, Debian's kernel and a busybox
  initramfs that shows a login prompt, then ext4 (:mod:`vmkeep.lab.bootable`).

:func:`build_image` returns an :class:`Image` (raw file path, size, file systems with byte
offsets). No loop devices or root are needed, except that an ``ntfs-3g`` FUSE mount is tried
to create NTFS sub-directories and skipped when unavailable.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmkeep.lab.errors import LabUnavailable
from vmkeep.lab.partitions import (
    LINUX_FS_GUID,
    MBR_FAT32_LBA,
    MBR_NTFS,
    SECTOR,
    write_gpt,
    write_mbr,
)
from vmkeep.lab.paths import cache_dir

RECIPE_VERSION = "5"
MiB = 1 << 20
TOOLS = {
    "mke2fs": "e2fsprogs",
    "mkntfs": "ntfs-3g",
    "ntfscp": "ntfs-3g",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "debugfs": "e2fsprogs",
}


@dataclass
class FileSystem:
    """A guest file system: partition ``offset``/``size`` in bytes on disk ``disk``."""

    type: str
    offset: int
    size: int
    mount: str
    label: str = ""
    disk: int = 0


@dataclass
class Image:
    path: Path
    size: int
    filesystems: list[FileSystem] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # guest path -> sha256 of content


def _tool(name: str) -> str:
    for d in (None, "/usr/sbin", "/sbin"):
        p = shutil.which(name, path=d) if d else shutil.which(name)
        if p:
            return p
    raise LabUnavailable(f"`{name}` not found; apt-get install {TOOLS.get(name, name)}")


def _run(*args: str) -> None:
    proc = subprocess.run([_tool(args[0]), *args[1:]], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabUnavailable(f"{' '.join(args[:2])} failed: {proc.stderr.strip()[-500:]}")


def _text(rng: random.Random, words: int) -> str:
    vocab = [
        "backup",
        "restore",
        "snapshot",
        "vmware",
        "datastore",
        "cluster",
        "host",
        "guest",
        "disk",
        "block",
        "chunk",
        "repository",
        "retention",
        "tape",
        "library",
        "volume",
        "partition",
        "inode",
        "journal",
        "extent",
    ]
    lines, line = [], []
    for _ in range(words):
        line.append(rng.choice(vocab))
        if len(line) >= 12:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


def _linux_tree(root: Path, rng: random.Random, hostname: str, big: bool) -> None:
    def put(rel: str, data: bytes | str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    put("etc/hostname", hostname + "\n")
    put(
        "etc/os-release",
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    )
    put("etc/fstab", "UUID=lab-root / ext4 errors=remount-ro 0 1\n")
    put("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    put("home/alice/notes.txt", _text(rng, 400))
    put("home/alice/Documents/report 2024 (final).txt", _text(rng, 2000))
    put("home/alice/Documents/ünïcode-名前.txt", "unicode file name\n")
    put("root/.bash_history", "apt-get update\nsystemctl restart postgresql\n")
    (root / "tmp").mkdir(exist_ok=True)
    (root / "srv/empty").mkdir(parents=True, exist_ok=True)
    os.symlink("../home/alice/notes.txt", root / "etc/notes-link")
    if big:
        put("var/log/syslog", _text(rng, 150_000))
        put("opt/app/data.bin", rng.randbytes(8 * MiB))
        put("var/lib/postgresql/base/16384/1259", rng.randbytes(3 * MiB))
        for i in range(150):
            put(f"usr/share/doc/pkg{i:03d}/copyright", _text(rng, 60 + i))
        os.link(root / "home/alice/notes.txt", root / "home/alice/notes-hardlink.txt")


def _file_hashes(root: Path, prefix: str = "/") -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[prefix + str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _mkext4(img: Path, size: int, root: Path, label: str, uid: uuid.UUID) -> None:
    with open(img, "wb") as f:
        f.truncate(size)
    _run(
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        label,
        "-U",
        str(uid),
        "-E",
        f"hash_seed={uid},root_owner=0:0",
        "-d",
        str(root),
        str(img),
        f"{size // 1024}k",
    )


def _copy_into(dst, src: Path, offset: int) -> None:
    """Copy src's data regions into dst at offset (holes stay holes)."""
    with open(src, "rb") as s:
        fd = s.fileno()
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                data_start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data_start, os.SEEK_HOLE)
            s.seek(data_start)
            left = hole - data_start
            dst.seek(offset + data_start)
            while left > 0:
                chunk = s.read(min(left, 4 * MiB))
                if not chunk:
                    break
                dst.write(chunk)
                left -= len(chunk)
            pos = hole


def _gpt_image(
    out: Path, size: int, fs_img: Path, name: str, seed: int, boot_img: Path | None = None
) -> int:
    """GPT: p1 Linux from ``fs_img`` at 1 MiB; with ``boot_img``, p2 (EFI system type, legacy
    BIOS bootable) at the end holding it, and SYSLINUX's ``gptmbr.bin`` as boot code."""
    from vmkeep.lab import bootable

    rng = random.Random(seed)
    first = MiB // SECTOR
    boot_size = os.path.getsize(boot_img) if boot_img is not None else 0
    last = (size - MiB - boot_size) // SECTOR - 1
    parts = [(first, last, LINUX_FS_GUID, name)]
    attributes = [0]
    if boot_img is not None:
        parts.append((last + 1, last + boot_size // SECTOR, bootable.ESP_GUID, "boot"))
        attributes.append(bootable.LEGACY_BIOS_BOOTABLE)
    with open(out, "wb") as f:
        f.truncate(size)
        write_gpt(
            f,
            size,
            parts,
            uuid.UUID(int=rng.getrandbits(128)),
            [uuid.UUID(int=rng.getrandbits(128)) for _ in parts],
            attributes,
        )
        _copy_into(f, fs_img, MiB)
        if boot_img is not None:
            _copy_into(f, boot_img, (last + 1) * SECTOR)
    if boot_img is not None:
        bootable.write_boot_code(out, gpt=True)
    return (last - first + 1) * SECTOR


def _build_linux(
    out: Path, size: int, hostname: str, big: bool, seed: int, label: str, boot: bool = False
) -> Image:
    """GPT + ext4 holding a small Linux tree; ``boot`` adds a FAT boot partition at the end that
    really boots (SYSLINUX, Debian's kernel, a busybox initramfs: :mod:`vmkeep.lab.bootable`)."""
    from vmkeep.lab import bootable

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="vmkeep-lab-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _linux_tree(root, rng, hostname, big)
        boot_size = bootable.boot_partition_size() if boot else 0
        part_size = size - 2 * MiB - boot_size
        fs_img = Path(tmp) / "fs.img"
        _mkext4(fs_img, part_size, root, label, uuid.UUID(int=rng.getrandbits(128)))
        boot_img = None
        if boot:
            boot_img = Path(tmp) / "boot.img"
            boot_first = (MiB + part_size) // SECTOR
            bootable.build_boot_partition(boot_img, boot_size, boot_first, hostname)
        _gpt_image(out, size, fs_img, label, seed, boot_img)
        files = _file_hashes(root)
    filesystems = [FileSystem("ext4", MiB, part_size, "/", label)]
    if boot:
        filesystems.append(FileSystem("vfat", MiB + part_size, boot_size, "/boot", "VMKBOOT"))
    return Image(out, size, filesystems, files)


def _ntfs_populate(img: Path, tree: Path) -> None:
    """Copy ``tree`` into the NTFS image: via an ntfs-3g mount when possible, else ntfscp."""
    mnt = Path(tempfile.mkdtemp(prefix="vmkeep-ntfs-"))
    mounted = False
    try:
        if os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("ntfs-3g"):
            mounted = (
                subprocess.run(
                    ["ntfs-3g", str(img), str(mnt)], capture_output=True, check=False
                ).returncode
                == 0
            )
        if mounted:
            shutil.copytree(tree, mnt, dirs_exist_ok=True)
        else:
            for p in sorted(tree.rglob("*")):
                if p.is_file() and p.parent == tree:
                    _run("ntfscp", "-f", str(img), str(p), "/" + p.name)
    finally:
        if mounted:
            subprocess.run(
                ["fusermount", "-u", str(mnt)], capture_output=True, check=False
            ) if shutil.which("fusermount") else subprocess.run(["umount", str(mnt)], check=False)
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def _build_windows(out: Path, size: int, seed: int) -> Image:
    rng = random.Random(seed)
    ntfs_first = MiB // SECTOR
    ntfs_size = (size * 3 // 4) // MiB * MiB - MiB
    fat_first = ntfs_first + ntfs_size // SECTOR
    fat_size = size - MiB - ntfs_size - MiB
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vmkeep-lab-") as tmp:
        t = Path(tmp)
        ntfs_tree = t / "ntfs"
        (ntfs_tree / "Windows/System32/drivers/etc").mkdir(parents=True)
        (ntfs_tree / "Windows/System32/drivers/etc/hosts").write_text("127.0.0.1 localhost\r\n")
        (ntfs_tree / "Users/Administrator/Documents").mkdir(parents=True)
        (ntfs_tree / "Users/Administrator/Documents/budget.csv").write_text(
            "\r\n".join(f"{i},{rng.randint(0, 10**6)}" for i in range(5000))
        )
        (ntfs_tree / "boot.ini").write_text("[boot loader]\r\ntimeout=30\r\n")
        (ntfs_tree / "pagefile.sys").write_bytes(rng.randbytes(4 * MiB))
        (ntfs_tree / "readme.txt").write_text(_text(rng, 500))
        ntfs_img = t / "ntfs.img"
        with open(ntfs_img, "wb") as f:
            f.truncate(ntfs_size)
        _run(
            "mkntfs",
            "-F",
            "-Q",
            "-q",
            "-L",
            "System",
            "-p",
            str(ntfs_first),
            "-H",
            "255",
            "-S",
            "63",
            str(ntfs_img),
        )
        _ntfs_populate(ntfs_img, ntfs_tree)
        fat_tree = t / "fat"
        (fat_tree / "DATA").mkdir(parents=True)
        (fat_tree / "DATA/INVOICE.TXT").write_text(_text(rng, 300))
        (fat_tree / "AUTOEXEC.BAT").write_text("@echo off\r\n")
        fat_img = t / "fat.img"
        _run("mkfs.vfat", "-C", "-n", "DDRIVE", str(fat_img), str(fat_size // 1024))
        _run("mmd", "-i", str(fat_img), "::/DATA")
        _run("mcopy", "-i", str(fat_img), str(fat_tree / "DATA/INVOICE.TXT"), "::/DATA/INVOICE.TXT")
        _run("mcopy", "-i", str(fat_img), str(fat_tree / "AUTOEXEC.BAT"), "::/AUTOEXEC.BAT")
        with open(out, "wb") as f:
            f.truncate(size)
            write_mbr(
                f,
                [
                    (ntfs_first, fat_first - 1, MBR_NTFS, True),
                    (fat_first, fat_first + fat_size // SECTOR - 1, MBR_FAT32_LBA, False),
                ],
                rng.getrandbits(32),
            )
            _copy_into(f, ntfs_img, ntfs_first * SECTOR)
            _copy_into(f, fat_img, fat_first * SECTOR)
        files.update(
            {
                k.replace("/", "\\").replace("\\", "C:\\", 1): v
                for k, v in _file_hashes(ntfs_tree).items()
            }
        )
        files.update(
            {
                k.replace("/", "\\").replace("\\", "D:\\", 1): v
                for k, v in _file_hashes(fat_tree).items()
            }
        )
    return Image(
        out,
        size,
        [
            FileSystem("ntfs", ntfs_first * SECTOR, ntfs_size, "C:\\", "System"),
            FileSystem("vfat", fat_first * SECTOR, fat_size, "D:\\", "DDRIVE"),
        ],
        files,
    )


def _build_bootable(out: Path, size: int, hostname: str, seed: int) -> Image:
    """MBR: p1 FAT16 boot partition (SYSLINUX, Debian kernel, busybox initramfs), p2 ext4 tree;
    see :mod:`vmkeep.lab.bootable`."""
    from vmkeep.lab import bootable

    rng = random.Random(seed)
    boot_first = MiB // SECTOR
    boot_size = bootable.boot_partition_size()
    root_first = boot_first + boot_size // SECTOR
    root_size = size - MiB - boot_size - MiB
    with tempfile.TemporaryDirectory(prefix="vmkeep-lab-") as tmp:
        t = Path(tmp)
        boot_img = t / "boot.img"
        bootable.build_boot_partition(boot_img, boot_size, boot_first, hostname)
        root = t / "root"
        root.mkdir()
        _linux_tree(root, rng, hostname, False)
        fs_img = t / "fs.img"
        _mkext4(fs_img, root_size, root, "rootfs", uuid.UUID(int=rng.getrandbits(128)))
        with open(out, "wb") as f:
            f.truncate(size)
            write_mbr(
                f,
                [
                    (boot_first, root_first - 1, 0x0E, True),
                    (root_first, root_first + root_size // SECTOR - 1, 0x83, False),
                ],
                rng.getrandbits(32),
            )
            _copy_into(f, boot_img, MiB)
            _copy_into(f, fs_img, MiB + boot_size)
        bootable.write_boot_code(out)
        files = _file_hashes(root)
    return Image(
        out,
        size,
        [
            FileSystem("vfat", MiB, boot_size, "/boot", "VMKBOOT"),
            FileSystem("ext4", MiB + boot_size, root_size, "/", "rootfs"),
        ],
        files,
    )


def _build_raw(out: Path, size: int, seed: int) -> Image:
    rng = random.Random(seed)
    with open(out, "wb") as f:
        f.truncate(size)
        f.write(rng.randbytes(min(size, 4 * MiB)))
    return Image(out, size)


RECIPES = {
    "linux-system": lambda out, size, seed, host: _build_linux(
        out, size, host, True, seed, "rootfs", boot=True
    ),
    "linux-data": lambda out, size, seed, host: _build_linux(out, size, host, False, seed, "data"),
    "tiny-linux": lambda out, size, seed, host: _build_linux(
        out, size, host, False, seed, "rootfs"
    ),
    "windows-system": lambda out, size, seed, host: _build_windows(out, size, seed),
    "raw-data": lambda out, size, seed, host: _build_raw(out, size, seed),
    "bootable-linux": lambda out, size, seed, host: _build_bootable(out, size, host, seed),
}


def build_image(recipe: str, size: int, seed: int = 1, hostname: str = "guest") -> Image:
    """Return the cached image for (recipe, size, seed, hostname), building it when missing."""
    key = hashlib.sha256(
        json.dumps([RECIPE_VERSION, recipe, size, seed, hostname]).encode()
    ).hexdigest()[:20]
    d = cache_dir() / "images"
    d.mkdir(parents=True, exist_ok=True)
    raw, meta = d / f"{recipe}-{key}.raw", d / f"{recipe}-{key}.json"
    if raw.exists() and meta.exists():
        m = json.loads(meta.read_text())
        return Image(raw, m["size"], [FileSystem(**x) for x in m["filesystems"]], m["files"])
    tmp = raw.with_suffix(f".tmp{os.getpid()}")
    img = RECIPES[recipe](tmp, size, seed, hostname)
    os.replace(tmp, raw)
    img.path = raw
    meta_tmp = meta.with_suffix(f".tmp{os.getpid()}")
    meta_tmp.write_text(
        json.dumps(
            {
                "size": img.size,
                "filesystems": [asdict(x) for x in img.filesystems],
                "files": img.files,
            }
        )
    )
    os.replace(meta_tmp, meta)
    return img


def copy_sparse(src: Path, dst: Path, size: int, thick: bool) -> None:
    """Copy an image to a flat extent: holes kept for thin disks, fully allocated for thick."""
    with open(dst, "wb") as f:
        f.truncate(size)
        if thick:
            os.posix_fallocate(f.fileno(), 0, size)
        _copy_into(f, src, 0)
