"""A Linux guest for tests of what Linux itself leaves on a disk: QEMU (TCG, no KVM needed) boots
Debian's kernel with a busybox initramfs that mounts the disk (``/dev/vda``, ext4, XFS or
Btrfs), writes two files, deletes one, then freezes the file system — what VMware Tools'
quiescing does in a Linux guest before the snapshot (``FIFREEZE``) — or not, and powers off at
once: the disk then holds what a snapshot taken at that moment would.

Used by ``test_deleted_blocks_kernel.py`` (ext4), ``test_deleted_blocks_xfs.py`` (XFS) and
``test_deleted_blocks_btrfs.py`` (Btrfs)."""

from __future__ import annotations

import gzip
import random
import shutil
import subprocess
from pathlib import Path

from tests.disks import disk_builders as b
from tests.missing import missing as tool_missing

MiB = b.MiB
#: what the guest writes: the file it keeps, and the one it deletes
KEEP, GONE = 3 * MiB, 12 * MiB
#: the modules the guest loads per file system, dependencies first (built-ins are skipped)
MODULES = {
    "ext4": ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4"),
    "xfs": ("virtio_pci", "virtio_blk", "crc32c_generic", "xfs"),
    "btrfs": ("virtio_pci", "virtio_blk", "crc32c_generic", "btrfs"),
}
#: how each file system is made on the empty disk (XFS: 300 MiB at least, mkfs.xfs insists)
MKFS = {
    "ext4": ("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096"),
    "xfs": ("mkfs.xfs", "-q", "-f"),
    "btrfs": ("mkfs.btrfs", "-q", "-f"),
}
SIZES = {"ext4": 64 * MiB, "xfs": 320 * MiB, "btrfs": 320 * MiB}
#: how long the guest may take at most (TCG, no KVM: slow hosts included); not a speed check
GUEST_TIMEOUT_S = 600

#: what the guest does on the mounted file system by default
WRITE_AND_DELETE = """  cp /gone.bin /mnt/gone.bin
  cp /keep.bin /mnt/keep.bin
  sync
  rm /mnt/gone.bin
  sync"""
#: many small files, every other one deleted: free space in many extents
FRAGMENT = """  i=0
  while [ $i -lt {files} ]; do
    dd if=/keep.bin of=/mnt/f$i bs=4096 count=1 2>/dev/null; i=$((i + 1))
  done
  sync
  i=0
  while [ $i -lt {files} ]; do rm /mnt/f$i; i=$((i + 2)); done
  sync"""

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod "/lib/$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t {fs} /dev/vda /mnt; then
{script}
  {freeze}
  echo VMKEEP-GUEST-DONE > /dev/ttyS0
else
  echo VMKEEP-GUEST-NO-MOUNT > /dev/ttyS0
fi
poweroff -f{no_sync}
"""


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def kept() -> bytes:
    return random_bytes(KEEP, 1)


def deleted() -> bytes:
    return random_bytes(GONE, 2)


def _kernel() -> tuple[Path, Path]:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        tool_missing("no /boot/vmlinuz-* (see .ci/apt-packages: linux-image-amd64)")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    return kernels[-1], Path("/lib/modules") / version


def _module_files(moddir: Path, modules: tuple[str, ...]) -> list[str]:
    """The ``.ko`` files of ``modules`` and their dependencies, dependencies first, as
    ``modules.dep`` names them."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[Path(path).name.split(".ko")[0].replace("-", "_")] = [path, *rest.split()]
    ordered: list[str] = []

    def add(path: str) -> None:
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        for dep in deps.get(name, [path])[1:]:
            add(dep)
        if path not in ordered:
            ordered.append(path)

    for module in modules:
        if module in deps:  # else built in
            add(deps[module][0])
    return ordered


def _initramfs(out: Path, moddir: Path, fs: str, freeze: bool, script: str, sync: bool) -> None:
    root = out.parent / f"initrd-{fs}-{freeze}"
    (root / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
    (root / "lib").mkdir()
    names = []
    for rel in _module_files(moddir, MODULES[fs]):
        data = (moddir / rel).read_bytes()
        if rel.endswith(".xz"):
            data = subprocess.run(["xz", "-dc"], input=data, capture_output=True,
                                  check=True).stdout
        elif rel.endswith(".zst"):
            data = subprocess.run(["zstd", "-dc"], input=data, capture_output=True,
                                  check=True).stdout
        name = Path(rel).name.split(".ko")[0] + ".ko"
        (root / "lib" / name).write_bytes(data)
        names.append(name)
    (root / "modules").write_text(" ".join(names) + "\n")
    (root / "gone.bin").write_bytes(deleted())
    (root / "keep.bin").write_bytes(kept())
    init = root / "init"
    freezing = "fsfreeze --freeze /mnt || echo VMKEEP-NO-FREEZE"
    init.write_text(INIT.format(fs=fs, script=script,
                                freeze=freezing if freeze else ": no freeze",
                                no_sync="" if sync else " -n"))
    init.chmod(0o755)
    listing = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True,
                             text=True, check=True).stdout
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"],
                             input=listing.encode(), cwd=root, capture_output=True, check=True)
    out.write_bytes(gzip.compress(archive.stdout, compresslevel=1))


def run_guest(tmp: Path, fs: str, freeze: bool, mkfs_options: tuple[str, ...] = (),
              script: str = WRITE_AND_DELETE, sync: bool = True) -> Path:
    """The disk (one ``fs`` file system, no partition table) after the guest ran ``script``
    (shell lines) on it, then froze it or not, and powered off — after a ``sync`` (busybox's
    ``poweroff -f``) unless ``sync`` is false (``-n``: a power cut)."""
    for tool in ("qemu-system-x86_64", "busybox", "cpio", MKFS[fs][0]):
        if shutil.which(tool) is None:
            tool_missing(f"missing tools: {tool} (see .ci/apt-packages)")
    kernel, moddir = _kernel()
    disk = tmp / "vda.img"
    with open(disk, "wb") as f:
        f.truncate(SIZES[fs])
    b.run(*MKFS[fs], *mkfs_options, disk)
    initrd = tmp / "initrd.gz"
    _initramfs(initrd, moddir, fs, freeze, script, sync)
    proc = subprocess.run(
        ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "256", "-nographic",
         "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
         "-append", "console=ttyS0 panic=-1 quiet",
         "-drive", f"file={disk},format=raw,if=virtio,cache=writethrough"],
        capture_output=True, text=True, timeout=GUEST_TIMEOUT_S, check=False,
    )
    said = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "VMKEEP-GUEST-DONE" in proc.stdout and "VMKEEP-NO-FREEZE" not in proc.stdout, said
    return disk
