"""A virtual tape library for the lab and the tests: Debian's ``tgt`` (tgtd) on 127.0.0.1.

tgtd emulates SSC tape drives and an SMC media changer in user space and serves them over
iSCSI; cartridges are files made by ``tgtimg`` (barcode, nominal size in MB).  :func:`start`
brings up one target holding ``drives`` tape drives (LUN 1..n) and the changer (LUN n+1; LUN
0 is tgt's own controller), with
``slots`` storage slots (addresses 1000…), ``mail_slots`` import/export slots (addresses 900…)
and one cartridge per slot (barcodes ``VMK001L6``…).  The management socket lives in the state
folder (``TGT_IPC_SOCKET``), the portal listens on 127.0.0.1 only.

tgtd ignores SIGTERM; :meth:`Vtl.stop` sends SIGINT to *its own* pid and waits, then SIGKILL.
Facts about tgt's emulation (it differs from real drives) are listed in :mod:`vmkeep.scsi`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmkeep.lab.errors import LabUnavailable

IQN = "iqn.2026-12.org.vmkeep:vtl"
#: Element addresses (SMC): picker, mail slots, drives, storage slots.
PICKER, MAIL_BASE, DRIVE_BASE, SLOT_BASE = 1, 900, 500, 1000


def missing_tools() -> list[str]:
    """The tgt programs not on PATH (empty when the VTL can run)."""
    return [t for t in ("tgtd", "tgtadm", "tgtimg") if shutil.which(t) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def barcode(i: int) -> str:
    """The i-th (1-based) lab barcode: ``VMK001L6`` (≤ 10 characters, as tgt requires)."""
    return f"VMK{i:03d}L6"


@dataclass
class Vtl:
    """A running tgtd library.  ``url`` is what ``vmkeep tape`` takes (``iscsi://host:port/iqn``)."""

    state: Path
    port: int
    pid: int
    drives: int
    slots: int
    mail_slots: int
    barcodes: list[str]
    size_mb: int
    control: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{IQN}"

    @property
    def changer_lun(self) -> int:
        """The changer's LUN: after the drives (LUN 0 is tgt's controller)."""
        return self.drives + 1

    @property
    def media_dir(self) -> Path:
        return self.state / "media"

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "port": self.port,
            "pid": self.pid,
            "changer_lun": self.changer_lun,
            "drive_luns": list(range(1, self.drives + 1)),
            "drives": self.drives,
            "slots": self.slots,
            "mail_slots": self.mail_slots,
            "barcodes": self.barcodes,
            "cartridge_mb": self.size_mb,
            "state": str(self.state),
        }

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:  # our own child (started by ensure() in this process): reap it when it exited
            if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 20) -> None:
        """SIGINT to tgtd (it ignores SIGTERM), wait, SIGKILL as the last resort."""
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGINT)
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout)
                return
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL (tests: a library that dies mid-job)."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait(20)


def load(state: Path) -> Vtl | None:
    """The library running from ``state`` (its ``vtl.json`` and a live pid), or None."""
    try:
        doc = json.loads((state / "vtl.json").read_text())
        v = Vtl(Path(doc["state"]), int(doc["port"]), int(doc["pid"]), int(doc["drives"]),
                int(doc["slots"]), int(doc["mail_slots"]), list(doc["barcodes"]),
                int(doc["cartridge_mb"]), int(doc["control"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return v if v.alive() and _is_tgtd(v.pid) else None


def _is_tgtd(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "tgtd"
    except OSError:
        return False


def ensure(state: Path, **kw: Any) -> Vtl:
    """The running library of ``state``, or a new one (``vmkeep lab up``)."""
    running = load(state)
    if running is not None:
        return running
    v = start(state, **kw)
    v.proc = None  # outlives this process; stopped by pid (``vmkeep lab down``)
    (state / "vtl.json").write_text(json.dumps({**v.to_json(), "control": v.control}))
    return v


def stop_running(state: Path) -> bool:
    """Stop the library of ``state`` by its pid; True when one was running."""
    v = load(state)
    (state / "vtl.json").unlink(missing_ok=True)
    if v is None:
        return False
    v.stop()
    return True


def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "TGT_IPC_SOCKET": str(state / "tgtd.ipc")}


def _adm(vtl: Vtl, *args: str) -> None:
    r = subprocess.run(
        ["tgtadm", "-C", str(vtl.control), "--lld", "iscsi", *args],
        env=_env(vtl.state),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        raise LabUnavailable(f"tgtadm {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")


def _params(vtl: Vtl, lun: int, params: str) -> None:
    _adm(vtl, "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", str(lun),
         "--params", params)


def make_cartridge(media: Path, code: str, size_mb: int) -> None:
    """One empty data cartridge (thin: a sparse file)."""
    r = subprocess.run(
        ["tgtimg", "--op", "new", "--device-type", "tape", f"--barcode={code}",
         f"--size={size_mb}", "--type=data", f"--file={media / code}", "--thin-provisioning"],
        capture_output=True, text=True, timeout=30,
    )
    if r.returncode != 0:
        raise LabUnavailable(f"tgtimg {code}: {r.stderr.strip() or r.stdout.strip()}")


def start(
    state: Path,
    drives: int = 2,
    slots: int = 8,
    mail_slots: int = 1,
    size_mb: int = 64,
    port: int = 0,
    timeout: float = 30,
) -> Vtl:
    """Start tgtd in ``state`` (created) and configure the library; returns once it listens."""
    missing = missing_tools()
    if missing:
        raise LabUnavailable(f"missing {', '.join(missing)} (Debian package tgt)")
    state.mkdir(parents=True, exist_ok=True)
    media = state / "media"
    media.mkdir(exist_ok=True)
    codes = [barcode(i) for i in range(1, slots + 1)]
    for code in codes:
        if not (media / code).exists():
            make_cartridge(media, code, size_mb)
    port = port or free_port()
    control = 20000 + (port % 10000)
    log = open(state / "tgtd.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal=127.0.0.1:{port}"],
        env=_env(state), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    vtl = Vtl(state, port, proc.pid, drives, slots, mail_slots, codes, size_mb, control, proc)
    try:
        _wait_ready(vtl, timeout)
        _configure(vtl)
    except BaseException:
        vtl.stop()
        raise
    (state / "tgtd.pid").write_text(str(proc.pid))
    return vtl


def _wait_ready(vtl: Vtl, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not vtl.alive():
            raise LabUnavailable(f"tgtd exited; see {vtl.state / 'tgtd.log'}")
        try:
            with socket.create_connection(("127.0.0.1", vtl.port), timeout=1):
                pass
            if (vtl.state / f"tgtd.ipc.{vtl.control}").exists():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LabUnavailable(f"tgtd did not listen on 127.0.0.1:{vtl.port}")
        time.sleep(0.05)


#: iSCSI session parameters the target offers (negotiated at each login)
TARGET_PARAMS = (("MaxRecvDataSegmentLength", "262144"), ("MaxBurstLength", "1048576"),
                 ("FirstBurstLength", "262144"))


def _configure(vtl: Vtl) -> None:
    s = vtl
    _adm(s, "--op", "new", "--mode", "target", "--tid", "1", "-T", IQN)
    # tgt's defaults (8 KiB data segments, 256 KiB bursts) cut a 1 MiB tape block into 128
    # PDUs and 4 R2T round trips; the values a real iSCSI tape target offers halve the CPU
    # both ends spend per byte (the initiator's is measured in docs/performance.md, tape)
    for key, value in TARGET_PARAMS:
        _adm(s, "--op", "update", "--mode", "target", "--tid", "1", "--name", key,
             "--value", value)
    for i in range(vtl.drives):
        _adm(s, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(i + 1),
             "--device-type", "tape")
    backing = vtl.state / "changer.bin"
    backing.write_bytes(b"\0" * 1024)
    c = vtl.changer_lun
    _adm(s, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(c),
         "-b", str(backing), "--device-type", "changer")
    _params(s, c, f"media_home={vtl.media_dir}")
    _params(s, c, f"element_type=1,start_address={PICKER},quantity=1")
    _params(s, c, f"element_type=2,start_address={SLOT_BASE},quantity={vtl.slots}")
    if vtl.mail_slots:
        _params(s, c, f"element_type=3,start_address={MAIL_BASE},quantity={vtl.mail_slots}")
    _params(s, c, f"element_type=4,start_address={DRIVE_BASE},quantity={vtl.drives}")
    for i in range(vtl.drives):
        _params(s, c, f"element_type=4,address={DRIVE_BASE + i},tid=1,lun={i + 1}")
    for i, code in enumerate(vtl.barcodes):
        _params(s, c, f"element_type=2,address={SLOT_BASE + i},barcode={code},sides=1")
    _adm(s, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "127.0.0.1")
