"""File-system verification of a restore point: each volume checked by its own read-only checker.

``verify_filesystems(repo_url, point)`` serves each volume of the point over NBD
(:mod:`vmkeep.browse.nbd`), presents it as a read-only file with ``nbdfuse`` and runs the file
system's own checker in no-modify mode on it:

==========  ====================================  =====================================
file system checker (never writes)                   exit codes read as "damaged"
==========  ====================================  =====================================
ext2/3/4    ``e2fsck -n -f``                      bit 4 set (errors left uncorrected;
                                                  e2fsck adds 8 when it cannot go on)
XFS         ``xfs_repair -n -f``                  1 (corruption found)
Btrfs       ``btrfs check --readonly``            1
FAT         ``fsck.fat -n``                       1
exFAT       ``fsck.exfat -n``                     1, or bit 4 set
NTFS        ``ntfsfix --no-action``               1 (ntfsfix checks little: the volume's
                                                  boot sector, $MFT/$MFTMirr and $LogFile)
==========  ====================================  =====================================

Exit code 0 is "clean"; any other code, a checker that cannot run, or a volume that cannot be
exported is "error" (not checked), never "clean".  The checkers read only the blocks they look
at, so only those chunks are fetched from the repository.

Contract: read-only on the repository and on the volume (the NBD export is read-only and the FUSE
file is mounted ``-r``); every export and mount made here is undone before returning, also when
a checker fails or is interrupted.  Volumes whose file system has no checker (swap, LUKS, unknown)
are reported as ``skipped`` with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmkeep.browse.nbd import ExportFailed, NbdExport
from vmkeep.browse.point import PointImage, VolumeInfo
from vmkeep.storage.repository import Repository

#: fs name (as :mod:`vmkeep.disks.magic` reports it) -> (argv before the file, "damaged" test)
CHECKERS: dict[str, tuple[list[str], Callable[[int], bool]]] = {
    "ext": (["e2fsck", "-n", "-f"], lambda code: bool(code & 4)),
    "xfs": (["xfs_repair", "-n", "-f"], lambda code: code == 1),
    "btrfs": (["btrfs", "check", "--readonly"], lambda code: code == 1),
    "fat": (["fsck.fat", "-n"], lambda code: code == 1),
    "exfat": (["fsck.exfat", "-n"], lambda code: code == 1 or bool(code & 4)),
    "ntfs": (["ntfsfix", "--no-action"], lambda code: code == 1),
}
#: seconds one checker may run (a huge volume on a slow repository may need --timeout)
DEFAULT_TIMEOUT = 3600.0
OUTPUT_LINES = 30


@dataclass
class VolumeCheck:
    """The verdict for one volume: ``clean``, ``damaged``, ``error`` or ``skipped``."""

    volume: str
    fs: str | None
    result: str
    checker: str = ""
    exit_code: int | None = None
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "fs": self.fs,
            "result": self.result,
            "checker": self.checker,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "reason": self.reason,
            "output": self.output,
        }


@dataclass
class FsVerification:
    """All volumes of one point: ``ok`` only when every checked volume is clean and nothing
    failed to be checked (skipped volumes — no checker for them — do not fail it)."""

    point_id: str
    checks: list[VolumeCheck]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return all(c.result in ("clean", "skipped") for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point_id,
            "ok": self.ok,
            "volumes": [c.to_json() for c in self.checks],
            "warnings": self.warnings,
        }


def verify_filesystems(
    repo: Repository,
    repo_url: str,
    point_id: str,
    *,
    volumes: list[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> FsVerification:
    """Check every volume of ``point_id`` (or those named in ``volumes``); see the module docstring.

    ``repo`` is the open repository (used to list the volumes); ``repo_url`` is handed to the
    exports, which open it again inside nbdkit with the same password from the environment.
    """
    with PointImage.open(repo, point_id) as img:
        found = img.volumes()
        warnings = list(img.warnings)
    chosen = [v for v in found if volumes is None or v.name in volumes or v.short in volumes]
    checks = []
    for vol in chosen:
        if progress is not None:
            progress(vol.name)
        checks.append(check_volume(repo_url, point_id, vol, timeout))
    return FsVerification(point_id, checks, warnings)


def check_volume(repo_url: str, point_id: str, vol: VolumeInfo, timeout: float) -> VolumeCheck:
    """Export ``vol``, mount it as a file and run its checker (see the module docstring)."""
    spec = CHECKERS.get(vol.fs or "")
    if spec is None:
        reason = f"no checker for {vol.fs or 'an unknown file system'}"
        return VolumeCheck(vol.name, vol.fs, "skipped", reason=reason)
    argv, damaged = spec
    if shutil.which(argv[0]) is None:
        return VolumeCheck(vol.name, vol.fs, "error", argv[0], reason=f"{argv[0]} is not installed")
    started = time.monotonic()
    try:
        with (
            NbdExport(repo_url, point_id, vol.disk, volume=vol.name) as export,
            _NbdFuse(export.socket_path or "", vol.name) as path,
        ):
            proc = subprocess.run(
                [*argv, path], capture_output=True, text=True, timeout=timeout, check=False
            )
    except ExportFailed as exc:
        return VolumeCheck(vol.name, vol.fs, "error", argv[0], reason=exc.get_message())
    except subprocess.TimeoutExpired:
        reason = f"{argv[0]} did not finish within {timeout:.0f} s"
        return VolumeCheck(vol.name, vol.fs, "error", argv[0], reason=reason)
    lines = (proc.stdout + proc.stderr).splitlines()[-OUTPUT_LINES:]
    code = proc.returncode
    result = "clean" if code == 0 else "damaged" if damaged(code) else "error"
    reason = "" if result == "clean" else f"{argv[0]} exited with {proc.returncode}"
    return VolumeCheck(
        vol.name,
        vol.fs,
        result,
        " ".join(argv),
        proc.returncode,
        time.monotonic() - started,
        lines,
        reason,
    )


class _NbdFuse:
    """``nbdfuse -r DIR/NAME --unix SOCKET`` for the duration of a ``with`` block."""

    def __init__(self, socket_path: str, name: str) -> None:
        self.socket_path, self.name = socket_path, name
        self.dir = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        if shutil.which("nbdfuse") is None:
            raise ExportFailed("nbdfuse is needed (Debian: apt-get install libnbd-bin fuse3)")
        self.dir = tempfile.mkdtemp(prefix="vmkeep-fsck-")
        pidfile = os.path.join(self.dir, ".pid")
        mnt = os.path.join(self.dir, "mnt")
        os.mkdir(mnt)
        self.proc = subprocess.Popen(
            ["nbdfuse", "-r", "-P", pidfile, f"{mnt}/{self.name}", "--unix", self.socket_path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(pidfile):
            if self.proc.poll() is not None:
                raw = self.proc.stderr.read() if self.proc.stderr else b""
                self._cleanup()
                last = raw.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                raise ExportFailed(f"nbdfuse failed: {last[0]}")
            if time.monotonic() > deadline:
                self.__exit__()
                raise ExportFailed("nbdfuse did not mount within 60 s")
            time.sleep(0.05)
        return f"{mnt}/{self.name}"

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            subprocess.run(
                ["fusermount3", "-u", os.path.join(self.dir, "mnt")],
                capture_output=True,
                check=False,
            )
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
