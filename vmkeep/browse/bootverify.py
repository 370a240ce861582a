"""Boot verification: boot a restore point in QEMU straight from the repository and watch it.

``verify_boot(repo, repo_url, point_id)`` exports each disk of the point read-only over NBD
(:mod:`vmkeep.browse.nbd`) and boots them in ``qemu-system-x86_64`` — KVM when ``/dev/kvm`` is
usable and a probe shows that it works (:func:`kvm_verdict`), TCG otherwise — with no network
device, every disk opened with ``snapshot=on`` (QEMU's own temporary overlay: the guest may
write, nothing reaches the repository), SeaBIOS or OVMF as the saved VM configuration's
``firmware`` says (image points boot with BIOS unless told).  It
passes when the serial console shows ``expect`` (a regular expression, default a login prompt)
within ``timeout`` seconds.  Either way a screenshot of the VGA screen is taken through QMP
(``screendump``, PNG) and the serial output is kept.

Contract: read-only on the repository; QEMU, the exports and their temporary files are gone when
the function returns (also on errors and interrupts); a machine that cannot run QEMU is an
:class:`BootCheckUnavailable` (exit 1) naming the missing package, never a "failed" verdict.
Bytes fetched from the repository during the boot are reported by the export plugin
(``statsfile``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmkeep.browse.errors import BrowseError
from vmkeep.browse.nbd import NbdExport
from vmkeep.storage.repository import Repository

DEFAULT_EXPECT = r"login:\s*$"
DEFAULT_TIMEOUT = 120.0
OVMF = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd")
SERIAL_TAIL = 4000
STDERR_TAIL = 2000


class BootCheckUnavailable(BrowseError):
    """Boot verification cannot run here: {}"""

    exit_code = 1


@dataclass
class BootResult:
    """What one boot showed (``passed`` only when ``expect`` appeared in time).

    ``stderr_tail``: the last :data:`STDERR_TAIL` characters QEMU wrote to stderr (its last
    words when it failed; not part of :meth:`to_json`)."""

    point_id: str
    passed: bool
    seconds: float
    accelerator: str
    firmware: str
    expect: str
    reason: str = ""
    serial_tail: str = ""
    bytes_fetched: int = 0
    disk_bytes: int = 0
    screenshot: bytes | None = field(default=None, repr=False)
    stderr_tail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point_id,
            "ok": self.passed,
            "seconds": round(self.seconds, 2),
            "accelerator": self.accelerator,
            "firmware": self.firmware,
            "expect": self.expect,
            "reason": self.reason,
            "bytes_fetched": self.bytes_fetched,
            "disk_bytes": self.disk_bytes,
            "screenshot": self.screenshot is not None,
            "serial_tail": self.serial_tail,
        }


def qemu_binary() -> str:
    exe = shutil.which("qemu-system-x86_64")
    if exe is None:
        raise BootCheckUnavailable(
            "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
        )
    return exe


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


@dataclass(frozen=True)
class KvmVerdict:
    """Whether QEMU's KVM works on this host: ``cpu`` is the ``-cpu`` model it ran the probe
    guest with, None when it did not (``why``: ``internal error`` or ``probe failed``; ``detail``:
    QEMU's last words)."""

    cpu: str | None
    why: str = ""
    detail: str = ""


#: ``-cpu`` models the probe tries, best first.  ``host`` gives the guest every host feature;
#: some nested hosts' KVM refuses the IA32_ARCH_CAPABILITIES MSR that ``host`` advertises (QEMU
#: 7.2 then aborts in ``kvm_buf_set_msrs``, seen 2026-12-03) but runs ``host`` without it.
PROBE_CPUS = ("host", "host,-arch-capabilities")
#: Seconds one probe may take (it exits in well under a second; this only stops a hang).
PROBE_TIMEOUT = 30.0
#: The probe guest: a 64 KiB BIOS whose reset vector (real mode, first instruction at 0xFFFF0)
#: writes 0x2a to ``isa-debug-exit`` — QEMU exits with ``0x2a << 1 | 1`` = 85, a status neither
#: QEMU itself nor a crash produces.
_PROBE_EXIT = 85
_PROBE_ROM = b"\xf4" * 0xFFF0 + bytes([0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0xEB, 0xFE]) + b"\xf4" * 9
_verdicts: dict[tuple[str, str], KvmVerdict] = {}
_verdicts_lock = threading.Lock()


def kvm_verdict(qemu: str | None = None) -> KvmVerdict:
    """Probe KVM once per (host, QEMU binary) and remember the verdict for this process.

    The probe boots a trivial guest (:data:`_PROBE_ROM`) with the options of a real boot under
    KVM and each of :data:`PROBE_CPUS` until one runs it: it creates the vCPU (where a host's KVM
    refuses MSRs), runs real-mode code (where nested KVM without unrestricted guest fails) and
    exits at once — a verdict on KVM itself, never on a guest.  No ``/dev/kvm`` access is not
    probed (:func:`kvm_usable`)."""
    path = os.path.realpath(qemu or qemu_binary())
    key = (socket.gethostname(), path)
    with _verdicts_lock:
        if key not in _verdicts:
            _verdicts[key] = _probe_kvm(path)
        return _verdicts[key]


def _remember_kvm_failure(qemu: str, detail: str) -> None:
    """A real boot hit a KVM failure the probe did not: later boots go straight to TCG.
    ``detail``: what QEMU wrote to stderr in that boot (:attr:`BootResult.stderr_tail`)."""
    key = (socket.gethostname(), os.path.realpath(qemu))
    with _verdicts_lock:
        _verdicts[key] = KvmVerdict(None, "internal error", detail)


def _probe_kvm(qemu: str) -> KvmVerdict:
    why, detail = "probe failed", ""
    with tempfile.TemporaryDirectory(prefix="vmkeep-kvm-probe-") as tmp:
        rom, errlog = Path(tmp) / "probe.rom", Path(tmp) / "qemu.err"
        rom.write_bytes(_PROBE_ROM)
        for cpu in PROBE_CPUS:
            cmd = [
                qemu, "-machine", "pc,accel=kvm", "-cpu", cpu, "-bios", str(rom), "-m", "16",
                "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            ]  # fmt: skip
            with open(errlog, "wb") as err_out:
                try:
                    proc = subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_out
                    )
                except OSError as exc:
                    return KvmVerdict(None, "probe failed", str(exc))
            try:
                deadline = time.monotonic() + PROBE_TIMEOUT
                # KVM internal errors pause the guest rather than end QEMU: watch stderr
                while proc.poll() is None and time.monotonic() < deadline:
                    if "KVM internal error" in errlog.read_text(errors="replace"):
                        break
                    time.sleep(0.02)
            finally:
                _stop(proc)
            errors = errlog.read_text(errors="replace")
            if proc.returncode == _PROBE_EXIT:
                return KvmVerdict(cpu)
            lines = errors.strip().splitlines()
            detail = lines[-1] if lines else f"QEMU exited ({proc.returncode})"
            if "KVM internal error" in errors:
                why = "internal error"
    return KvmVerdict(None, why, detail)


def firmware_of(repo: Repository, point_id: str) -> str:
    """``bios`` or ``efi`` from the saved VM configuration (``bios`` for image points)."""
    point = repo.load_point(point_id)
    config = point.meta.get("vm_config") or {}
    firmware = str(config.get("firmware") or "bios").lower() if isinstance(config, dict) else "bios"
    return "efi" if firmware == "efi" else "bios"


def verify_boot(
    repo: Repository,
    repo_url: str,
    point_id: str,
    *,
    expect: str = DEFAULT_EXPECT,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mib: int = 512,
    firmware: str | None = None,
    accelerator: str | None = None,
) -> BootResult:
    """Boot ``point_id`` and wait for ``expect`` on the serial console (module docstring).

    ``accelerator`` None picks KVM when ``/dev/kvm`` is usable and :func:`kvm_verdict`'s probe
    ran on it (with the ``-cpu`` model the probe found), else TCG, labelled ``tcg (kvm: probe
    failed)`` or ``tcg (kvm: internal error)``.  Should the boot itself still show a KVM failure
    (:func:`kvm_broke_qemu`: nested virtualisation without unrestricted guest mode for some boot
    loader's real-mode code, or a host KVM that refuses what ``-cpu`` asks for and aborts QEMU),
    it falls back to TCG once (``tcg (kvm: internal error)``), and later boots skip KVM.
    """
    pattern = re.compile(expect, re.MULTILINE)
    firmware = firmware or firmware_of(repo, point_id)
    accel, cpu, label = accelerator or "tcg", "host", accelerator or "tcg"
    if accelerator != "tcg" and (accelerator == "kvm" or kvm_usable()):
        verdict = kvm_verdict()
        if verdict.cpu is not None:
            accel, cpu = "kvm", verdict.cpu
            label = "kvm" if cpu == "host" else f"kvm (cpu {cpu})"
        elif accelerator is None:
            label = f"tcg (kvm: {verdict.why})"
    args = (repo, repo_url, point_id, pattern, expect, timeout, memory_mib, firmware)
    result = _boot(*args, accel, cpu)
    result.accelerator = label
    if result.reason == KVM_FAILED and accelerator is None:
        # Nested or restricted KVM (no unrestricted guest) cannot emulate some real-mode code
        # of boot loaders; the same boot under TCG is slower but exact.
        _remember_kvm_failure(qemu_binary(), result.stderr_tail)
        result = _boot(*args, "tcg", cpu)
        result.accelerator = "tcg (kvm: internal error)"
    return result


KVM_FAILED = "KVM internal error (this host's KVM cannot run the guest's boot code)"


def kvm_broke_qemu(stderr: str) -> bool:
    """Whether QEMU's last words blame KVM rather than the guest.

    Seen on nested hosts: ``KVM internal error`` (no unrestricted guest mode for real-mode boot
    code), and QEMU aborting in its KVM glue, e.g. ``target/i386/kvm/kvm.c:…: kvm_buf_set_msrs:
    Assertion … failed`` when the host's KVM refuses MSRs that ``-cpu host`` advertises, or
    ``failed to initialize kvm``.  A guest cannot cause these; the same boot under TCG is exact.
    """
    lowered = stderr.lower()
    return (
        "kvm internal error" in lowered
        or "/kvm/" in lowered
        or "kvm_" in lowered
        or "failed to initialize kvm" in lowered
    )


def _boot(
    repo: Repository,
    repo_url: str,
    point_id: str,
    pattern: re.Pattern[str],
    expect: str,
    timeout: float,
    memory_mib: int,
    firmware: str,
    accel: str,
    cpu: str = "host",
) -> BootResult:
    qemu = qemu_binary()
    point = repo.load_point(point_id)
    disks = sorted(point.chunks)
    disk_bytes = sum(point.chunks[d].size for d in disks)
    text = errors = ""
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="vmkeep-boot-") as tmp:
        work = Path(tmp)
        exports = []
        for n in disks:
            stats = work / f"stats{n}.json"
            export = NbdExport(repo_url, point_id, n, stats_file=str(stats))
            exports.append((stack.enter_context(export), stats))
        serial, qmp_sock, errlog = work / "serial.log", work / "qmp.sock", work / "qemu.err"
        cmd = [
            qemu,
            "-machine",
            f"pc,accel={accel}",
            "-m",
            str(memory_mib),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-vga",
            "std",
            "-display",
            "none",
            "-no-reboot",
            # a disk the firmware cannot boot ends QEMU after 1 s instead of a retry loop
            "-boot",
            "strict=on,reboot-timeout=1000",
            "-serial",
            f"file:{serial}",
            "-qmp",
            f"unix:{qmp_sock},server=on,wait=off",
        ]
        if accel == "kvm":
            cmd += ["-cpu", cpu]
        if firmware == "efi":
            ovmf = next((p for p in OVMF if os.path.exists(p)), None)
            if ovmf is None:
                raise BootCheckUnavailable("UEFI firmware is missing (apt-get install ovmf)")
            cmd += ["-bios", ovmf]
        for i, (export, _) in enumerate(exports):
            cmd += ["-drive", f"file={export.uri},format=raw,if=ide,index={i},snapshot=on"]
        started = time.monotonic()
        with open(errlog, "wb") as err_out:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_out)
        stack.callback(_stop, proc)
        passed, reason = False, ""
        while True:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if pattern.search(text):
                passed = True
                break
            errors = errlog.read_text(errors="replace")
            if "KVM internal error" in errors:
                reason = KVM_FAILED
                break
            if proc.poll() is not None and accel == "kvm" and kvm_broke_qemu(errors):
                reason = KVM_FAILED
                break
            if proc.poll() is not None:
                reason = f"QEMU exited ({proc.returncode}) before the guest showed {expect!r}"
                if errors.strip():
                    reason += f": {errors.strip().splitlines()[-1]}"
                break
            if time.monotonic() - started > timeout:
                reason = f"no {expect!r} on the serial console within {timeout:.0f} s"
                break
            time.sleep(0.2)
        seconds = time.monotonic() - started
        shot = _screendump(str(qmp_sock), work / "screen.png") if proc.poll() is None else None
        _stop(proc)
        errors = errlog.read_text(errors="replace")
        # QEMU's connections are gone; each export writes its statistics as it sees that
        deadline = time.monotonic() + 10
        while not all(stats.exists() for _, stats in exports) and time.monotonic() < deadline:
            time.sleep(0.05)
        for export, _ in exports:
            export.stop()
        fetched = sum(_stats_bytes(stats) for _, stats in exports)
    return BootResult(
        point_id,
        passed,
        seconds,
        accel,
        firmware,
        expect,
        reason,
        text[-SERIAL_TAIL:],
        fetched,
        disk_bytes,
        shot,
        errors.strip()[-STDERR_TAIL:],
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _stats_bytes(path: Path) -> int:
    try:
        return int(json.loads(path.read_text()).get("bytes_fetched", 0))
    except (OSError, ValueError):
        return 0


def _screendump(sock: str, out: Path) -> bytes | None:
    """A PNG of the VGA screen through QMP, or None when QEMU cannot take one."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    qmp = QEMUMonitorProtocol(sock)
    try:
        qmp.connect()
        qmp.cmd("screendump", filename=str(out), format="png")
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return out.read_bytes() if out.exists() else None
    except Exception:  # a guest that killed QEMU, an old QEMU without PNG: no screenshot
        return None
    finally:
        qmp.close()
