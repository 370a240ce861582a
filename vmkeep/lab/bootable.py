"""A guest disk that really boots: Debian's kernel, a busybox initramfs, SYSLINUX; no loop device.

Recipe ``bootable-linux`` of :mod:`vmkeep.lab.images` (and the boot partition of the lab's
``linux-system`` disk, GPT: ``gptmbr.bin`` and an EFI-system-type FAT partition marked legacy
BIOS bootable), used for boot verification (``vmkeep verify boot``).  Layout (MBR, BIOS boot):

* MBR boot code: SYSLINUX's ``mbr.bin`` (it chains to the active partition);
* p1 (active, FAT16 LBA, 24 MiB): ``ldlinux.sys``/``ldlinux.c32`` (``syslinux --install``, which
  writes a FAT image through mtools), ``syslinux.cfg``, ``vmlinuz`` (the newest
  ``/boot/vmlinuz-*`` of Debian's ``linux-image-amd64``) and ``initrd.gz``;
* p2 (Linux, ext4): a small Linux tree, like the other lab guests.

The initramfs holds ``busybox`` (Debian ``busybox-static``) and an ``/init`` that mounts
``/proc``, ``/sys`` and ``/dev``, prints ``vmkeep guest <hostname> is up`` on the serial line and
the screen, and runs ``getty`` on ``ttyS0`` (and ``tty1``), which shows ``<hostname> login:`` —
the sign of life boot verification waits for.  The kernel command line sends the console to both
``tty0`` and ``ttyS0``.

Built with Debian packages only: ``syslinux``, ``syslinux-common``, ``busybox-static``,
``linux-image-amd64``, ``dosfstools``, ``mtools``, ``cpio``, ``e2fsprogs``.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from vmkeep.lab.errors import LabUnavailable

MiB = 1 << 20
SECTOR = 512
BOOT_PART_MIB = 24
MBR_CODE = ("/usr/lib/syslinux/mbr/mbr.bin", "/usr/share/syslinux/mbr.bin")
GPT_MBR_CODE = ("/usr/lib/syslinux/mbr/gptmbr.bin", "/usr/share/syslinux/gptmbr.bin")
#: GPT attribute bit that SYSLINUX's gptmbr.bin looks for
LEGACY_BIOS_BOOTABLE = 1 << 2
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")
LOGIN_PROMPT = "login:"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /etc /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
hostname {hostname}
echo "vmkeep guest {hostname} is up (kernel $(uname -r))" | tee /dev/tty1 > /dev/ttyS0
setsid getty -L 0 tty1 linux &
exec setsid getty -L 115200 ttyS0 vt100
"""

SYSLINUX_CFG = """DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  APPEND initrd=initrd.gz console=tty0 console=ttyS0,115200 quiet panic=5
"""


def _first(paths: tuple[str, ...], package: str) -> str:
    for p in paths:
        if os.path.exists(p):
            return p
    raise LabUnavailable(f"{paths[0]} not found; apt-get install {package}")


def _tool(name: str, package: str) -> str:
    for d in (None, "/usr/sbin", "/sbin"):
        p = shutil.which(name, path=d) if d else shutil.which(name)
        if p:
            return p
    raise LabUnavailable(f"`{name}` not found; apt-get install {package}")


def _run(args: list[str], package: str, **kw: object) -> None:
    proc = subprocess.run(
        [_tool(args[0], package), *args[1:]], capture_output=True, check=False, **kw  # type: ignore[call-overload]
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else ""
        raise LabUnavailable(f"{' '.join(args[:2])} failed: {err.strip()[-500:]}")


def kernel_image() -> Path:
    """The newest Debian kernel on this machine (``linux-image-amd64``)."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        raise LabUnavailable("no /boot/vmlinuz-*; apt-get install linux-image-amd64")
    return kernels[-1]


def build_initramfs(out: Path, hostname: str) -> None:
    """A gzip'd newc cpio with ``/bin/busybox`` and ``/init`` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="vmkeep-initrd-") as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy(_first(BUSYBOX, "busybox-static"), root / "bin" / "busybox")
        init = root / "init"
        init.write_text(INIT.format(hostname=hostname))
        init.chmod(0o755)
        names = "\n".join(["bin", "bin/busybox", "init"]) + "\n"
        proc = subprocess.run(
            [_tool("cpio", "cpio"), "--quiet", "-o", "-H", "newc", "--owner=0:0"],
            input=names.encode(),
            cwd=root,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LabUnavailable(f"cpio failed: {proc.stderr.decode(errors='replace')[-300:]}")
        out.write_bytes(gzip.compress(proc.stdout, mtime=0))


def build_boot_partition(out: Path, size: int, first_lba: int, hostname: str) -> None:
    """FAT16 with SYSLINUX, the kernel and the initramfs, for a partition at ``first_lba``."""
    with tempfile.TemporaryDirectory(prefix="vmkeep-boot-") as tmp:
        t = Path(tmp)
        with open(out, "wb") as f:
            f.truncate(size)
        _run(["mkfs.vfat", "-F", "16", "-n", "VMKBOOT", "-h", str(first_lba), str(out)],
             "dosfstools")
        _run(["syslinux", "--install", str(out)], "syslinux")
        (t / "syslinux.cfg").write_text(SYSLINUX_CFG)
        shutil.copy(kernel_image(), t / "vmlinuz")
        build_initramfs(t / "initrd.gz", hostname)
        for name in ("syslinux.cfg", "vmlinuz", "initrd.gz"):
            _run(["mcopy", "-o", "-i", str(out), str(t / name), f"::{name}"], "mtools")


def write_boot_code(disk: Path, gpt: bool = False) -> None:
    """SYSLINUX's MBR boot code (``gptmbr.bin`` for GPT disks: it boots the partition marked
    legacy-BIOS-bootable) into the first 440 bytes; the partition table stays."""
    code = Path(_first(GPT_MBR_CODE if gpt else MBR_CODE, "syslinux-common")).read_bytes()[:440]
    with open(disk, "r+b") as f:
        f.write(code)


def boot_partition_size() -> int:
    return BOOT_PART_MIB * MiB


def seeded_uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128))
