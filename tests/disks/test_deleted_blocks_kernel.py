"""Deleted blocks on ext4 as Linux itself leaves it: a QEMU guest (Debian's kernel, a busybox
initramfs) mounts an ext4 disk, writes two files, deletes one, and then either freezes the file
system — what VMware Tools' quiescing does in a Linux guest before the snapshot — or not, and
powers off at once (the disk then holds what a snapshot taken at that moment would).

Frozen: the journal has nothing to replay, every checksum and free count agrees, and the deleted
file's blocks are found free while the kept file's are not.  Not frozen (a crash-consistent
state): the journal still needs recovery, so the volume is read as usual.  What mke2fs and
debugfs make (test_deleted_blocks_ext.py) is checked here against the kernel's own ext4."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.missing import missing as tool_missing
from vmkeep.disks.deleted_blocks import DeletedScan, find_deleted

pytestmark = pytest.mark.slow
MiB = b.MiB
VOLUME = 64 * MiB
KEEP, GONE = 3 * MiB, 12 * MiB
#: the modules the guest loads, dependencies first (those built into the kernel are skipped)
MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
#: how long the guest may take at most (TCG, no KVM: slow hosts included); not a speed check
GUEST_TIMEOUT_S = 600

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod "/lib/$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t ext4 /dev/vda /mnt; then
  cp /gone.bin /mnt/gone.bin
  cp /keep.bin /mnt/keep.bin
  sync
  rm /mnt/gone.bin
  sync
  {freeze}
  echo VMKEEP-GUEST-DONE > /dev/ttyS0
else
  echo VMKEEP-GUEST-NO-MOUNT > /dev/ttyS0
fi
poweroff -f
"""


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _kernel() -> tuple[Path, Path]:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        tool_missing("no /boot/vmlinuz-* (see .ci/apt-packages: linux-image-amd64)")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    return kernels[-1], Path("/lib/modules") / version


def _module_files(moddir: Path) -> list[str]:
    """The ``.ko`` files of :data:`MODULES` and their dependencies, dependencies first, as
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

    for module in MODULES:
        if module in deps:  # else built in
            add(deps[module][0])
    return ordered


def _initramfs(out: Path, moddir: Path, freeze: bool) -> None:
    root = out.parent / f"initrd-{freeze}"
    (root / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
    (root / "lib").mkdir()
    names = []
    for rel in _module_files(moddir):
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
    (root / "gone.bin").write_bytes(_random(GONE, 2))
    (root / "keep.bin").write_bytes(_random(KEEP, 1))
    init = root / "init"
    freezing = "fsfreeze --freeze /mnt || echo VMKEEP-NO-FREEZE"
    init.write_text(INIT.format(freeze=freezing if freeze else ": no freeze"))
    init.chmod(0o755)
    listing = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True,
                             text=True, check=True).stdout
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"],
                             input=listing.encode(), cwd=root, capture_output=True, check=True)
    out.write_bytes(gzip.compress(archive.stdout, compresslevel=1))


def _run_guest(tmp: Path, freeze: bool) -> Path:
    """The ext4 disk after the guest's run (see the module docstring)."""
    for tool in ("qemu-system-x86_64", "busybox", "cpio", "mke2fs"):
        if shutil.which(tool) is None:
            tool_missing(f"missing tools: {tool} (see .ci/apt-packages)")
    kernel, moddir = _kernel()
    disk = tmp / "vda.img"
    with open(disk, "wb") as f:
        f.truncate(VOLUME)
    b.run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", disk)
    initrd = tmp / "initrd.gz"
    _initramfs(initrd, moddir, freeze)
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


def _scan(disk: Path) -> DeletedScan:
    with open(disk, "rb") as fh:
        return find_deleted(lambda o, n: os.pread(fh.fileno(), n, o), disk.stat().st_size, MiB)


def test_a_frozen_ext4_shows_the_deleted_file_free_and_the_kept_one_in_use(
    tmp_path: Path,
) -> None:
    disk = _run_guest(tmp_path, freeze=True)
    checked = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # clean as frozen
    scan = _scan(disk)
    assert scan.notes == []
    data = disk.read_bytes()
    gone = _random(GONE, 2)
    for at in range(MiB // 2, GONE, MiB):  # a block in the middle of each MiB of the file
        where = data.find(gone[at:at + 4096])
        assert where >= 0, at  # the deleted bytes are on the disk …
        assert any(a.offset <= where < a.offset + a.length for a in scan.areas), at  # … free
    keep_at = data.find(_random(KEEP, 1)[:4096])
    assert keep_at >= 0
    assert not any(a.offset < keep_at + KEEP and keep_at < a.offset + a.length
                   for a in scan.areas)


def test_an_ext4_left_mounted_is_read_as_usual(tmp_path: Path) -> None:
    disk = _run_guest(tmp_path, freeze=False)
    scan = _scan(disk)
    assert scan.areas == []
    assert scan.notes == ["whole: its journal needs recovery (neither frozen nor cleanly "
                          "unmounted): free space read as usual"]
