"""The NFS export behind an instant restore: a restore point's disks served by nfs-ganesha.

One supervisor process per run (``python -m vmkeep.browse.instant_export RUNDIR``, started
detached by :func:`start`) builds, bottom to top::

    nbdkit (vmkeep plugin, cow filter)  per disk: reads fetch repository chunks, writes go to
                                        nbdkit's overlay in RUNDIR/overlay, never the repository
    nbdfuse                             per disk: the export as one file (RUNDIR/nbd/N/flat)
    instant_view (FUSE)                 RUNDIR/view: RUNDIR/store (descriptors, files ESX makes)
                                        with FOLDER/diskN-flat.vmdk mapped to those files
    ganesha.nfsd (FSAL_VFS, NFSv4 only) exports RUNDIR/view at the pseudo path on
                                        HOST:PORT (PORT 0: a free ephemeral port)

Contract:

- ``RUNDIR/spec.json`` (written by :func:`start`): ``repo``, ``point``, ``folder`` (the VM's
  folder on the datastore), ``disks`` (``[{"index": i, "capacity": bytes}]``), ``host``,
  ``port``, ``pseudo``, ``clients`` (the only addresses/networks that may mount the export).
  The repository password comes from the environment (never a file).
- When everything serves, ``RUNDIR/ready.json`` appears: ``{"pid", "port", "pseudo",
  "disks": [datastore-relative descriptor paths]}``; a failure writes ``RUNDIR/failed.json``
  (``{"error"}``) and exits 1 after stopping what it started.
- SIGTERM/SIGINT stops it top-down (ganesha, the view, nbdfuse, nbdkit: each SIGTERM, then
  SIGKILL after a bounded wait) and writes ``RUNDIR/stopped.json`` with the bytes fetched
  from the repository; :func:`stop` does that from another process and waits.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmkeep.browse.errors import BrowseError
from vmkeep.browse.nbd import NbdExport
from vmkeep.browse.vmdk_export import descriptor_text
from vmkeep.storage.crypto import hand_over_password

START_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
GANESHA_TRIES = 5


class InstantExportFailed(BrowseError):
    """The instant-restore NFS export failed: {}"""

    exit_code = 1


def require_ganesha() -> str:
    """``ganesha.nfsd`` with FSAL_VFS, or :class:`InstantExportFailed` naming the packages."""
    exe = shutil.which("ganesha.nfsd") or (
        "/usr/bin/ganesha.nfsd" if os.path.exists("/usr/bin/ganesha.nfsd") else None
    )
    fsal = list(Path("/usr/lib").glob("*/ganesha/libfsalvfs.so")) + list(
        Path("/usr/lib/ganesha").glob("libfsalvfs.so")
    )
    if exe is None or not fsal:
        raise InstantExportFailed(
            "nfs-ganesha with its VFS backend is needed (Debian: apt-get install nfs-ganesha "
            "nfs-ganesha-vfs)"
        )
    if shutil.which("nbdfuse") is None:
        raise InstantExportFailed("nbdfuse is needed (Debian: apt-get install libnbd-bin)")
    return exe


def check_clients(clients: list[str]) -> list[str]:
    """``clients`` as normalised IP addresses or networks (:class:`InstantExportFailed` for
    anything else: they are written into ganesha's configuration)."""
    out = []
    for c in clients:
        try:
            out.append(str(ipaddress.ip_network(c, strict=False)))
        except ValueError:
            raise InstantExportFailed(f"NFS client {c!r} is not an IP address or network") from None
    if not out:
        raise InstantExportFailed("no NFS client allowed: give the ESXi host's address")
    return out


def ganesha_config(run: Path, view: Path, host: str, port: int, pseudo: str,
                   clients: list[str]) -> str:
    """nfs-ganesha's configuration: NFSv4 only over TCP on ``host:port`` (no portmapper, NLM or
    rquota), one FSAL_VFS export of ``view`` at ``pseudo`` that only ``clients`` (the ESXi host's
    addresses) may mount, read-write; state kept in ``run``; attributes are not cached (vmkeep
    itself writes files into the view, e.g. the NVRAM)."""
    for text in (str(run), str(view), host, pseudo):
        if any(c in text for c in '"\n;{}'):
            raise InstantExportFailed(f"unusable path or address for nfs-ganesha: {text!r}")
    allowed = ", ".join(check_clients(clients))
    return f"""
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {port};
    Bind_addr = {host};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{run / 'ganesha' / 'recovery'}";
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
    Export_Id = 1;
    Path = "{view}";
    Pseudo = "{pseudo}";
    Access_Type = None;
    Squash = No_Root_Squash;
    Protocols = 4;
    Transports = TCP;
    SecType = sys;
    Attr_Expiration_Time = 0;
    FSAL {{ Name = VFS; }}
    CLIENT {{
        Clients = {allowed};
        Access_Type = RW;
        Squash = No_Root_Squash;
    }}
}}
"""


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == target for line in f if len(line.split()) > 4)


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Supervisor:
    """What one run's supervisor started (see the module docstring)."""

    run: Path
    spec: dict[str, Any]
    exports: list[NbdExport] = field(default_factory=list)
    nbdfuses: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    view: subprocess.Popen[bytes] | None = None
    ganesha: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self) -> dict[str, Any]:
        run, spec = self.run, self.spec
        ganesha = require_ganesha()
        folder = spec["folder"]
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,79}", folder):
            raise InstantExportFailed(f"unusable datastore folder name {folder!r}")
        store = run / "store" / folder
        store.mkdir(parents=True, exist_ok=True)
        (run / "overlay").mkdir(exist_ok=True)
        env = dict(os.environ, TMPDIR=str(run / "overlay"))  # nbdkit's cow overlay lives here
        extents, disks = [], []
        self.exports = [
            NbdExport(
                spec["repo"], spec["point"], disk=int(disk["index"]), writable=True,
                socket_path=str(run / f"nbd{n}.sock"), env=env,
                stats_file=str(run / f"stats{n}.json"),
            )
            for n, disk in enumerate(spec["disks"])
        ]
        # all from this thread (nbdkit runs with --exit-with-parent, whose parent-death signal
        # fires when the *thread* that started it ends), opening the repository side by side
        for export in self.exports:
            export.spawn()
        for export in self.exports:
            export.wait_ready()
        for n, disk in enumerate(spec["disks"]):
            mnt = run / "nbd" / str(n)
            mnt.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(
                ["nbdfuse", str(mnt / "flat"), "--unix", str(self.exports[n].socket_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            self.nbdfuses.append((proc, mnt))
            self._wait(lambda m=mnt: _mounted(m), proc, f"nbdfuse for disk {n}")
            flat = f"disk{n}-flat.vmdk"
            (store / f"disk{n}.vmdk").write_text(
                descriptor_text(flat, int(disk["capacity"])), encoding="utf-8"
            )
            extents.append(f"{folder}/{flat}={mnt / 'flat'}")
            disks.append(f"{folder}/disk{n}.vmdk")
        view = run / "view"
        view.mkdir(exist_ok=True)
        self.view = subprocess.Popen(
            [sys.executable, "-m", "vmkeep.browse.instant_view", str(run / "store"), str(view),
             *extents],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._wait(lambda: _mounted(view), self.view, "the datastore view")
        self._start_ganesha(ganesha, view)
        return {"pid": os.getpid(), "port": self.port, "pseudo": spec["pseudo"], "disks": disks,
                "host": spec["host"]}

    def _start_ganesha(self, exe: str, view: Path) -> None:
        gdir = self.run / "ganesha"
        (gdir / "recovery").mkdir(parents=True, exist_ok=True)
        host, wanted = self.spec["host"], int(self.spec.get("port") or 0)
        for _ in range(GANESHA_TRIES):
            port = wanted or free_port(host)
            conf = gdir / "ganesha.conf"
            conf.write_text(ganesha_config(self.run, view, host, port, self.spec["pseudo"],
                                           list(self.spec.get("clients") or [])))
            self.ganesha = subprocess.Popen(
                [exe, "-F", "-f", str(conf), "-L", str(gdir / "ganesha.log"),
                 "-p", str(gdir / "ganesha.pid"), "-N", "NIV_EVENT"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                self._wait(lambda p=port: _listening(host, p), self.ganesha, "nfs-ganesha")
            except InstantExportFailed:
                if wanted:
                    raise
                _terminate(self.ganesha)
                continue  # the free port was taken meanwhile: try another
            self.port = port
            return
        raise InstantExportFailed(f"nfs-ganesha could not listen on {host} (see {gdir})")

    def _wait(self, ready: Any, proc: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
                raise InstantExportFailed(f"{what} exited: {err.strip()[-300:] or proc.returncode}")
            if time.monotonic() > deadline:
                raise InstantExportFailed(f"{what} did not start within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def _await_stats(self, n: int) -> None:
        """nbdkit writes ``stats{n}.json`` when its client (nbdfuse) disconnects, on its own
        connection thread: stopping nbdkit before that lost the count (seen under load: a stop
        reported 0 bytes fetched).  Wait for the file — or for nbdkit to be gone — at most
        ``STOP_TIMEOUT``."""
        path, export = self.run / f"stats{n}.json", self.exports[n]
        deadline = time.monotonic() + STOP_TIMEOUT
        while not _stats_written(path, export) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> dict[str, int]:
        """Stop everything top-down; returns the bytes/chunks fetched from the repository."""
        _terminate(self.ganesha)
        _terminate(self.view, 10.0)  # stateless: the store is plain files
        view = self.run / "view"
        if _mounted(view):
            subprocess.run(["fusermount3", "-u", "-z", str(view)], check=False,
                           capture_output=True)
        for proc, mnt in reversed(self.nbdfuses):
            if _mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False,
                               capture_output=True)
            _terminate(proc)
        for n in range(len(self.nbdfuses)):  # each export's one client has gone
            self._await_stats(n)
        for export in reversed(self.exports):
            export.stop()
        stats = {"bytes_fetched": 0, "chunks_fetched": 0}
        for n in range(len(self.exports)):
            try:
                doc = json.loads((self.run / f"stats{n}.json").read_text())
            except (OSError, ValueError):
                continue
            for k in stats:
                stats[k] += int(doc.get(k, 0))
        return stats


def _stats_written(path: Path, export: NbdExport) -> bool:
    return path.exists() or export.proc is None or export.proc.poll() is not None


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def serve(run: Path) -> int:
    """The supervisor's body (see the module docstring)."""
    spec = json.loads((run / "spec.json").read_text())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    sup = Supervisor(run, spec)
    try:
        ready = sup.start()
    except BaseException as exc:
        sup.stop()
        _write_json(run / "failed.json", {"error": str(exc)})
        return 1
    _write_json(run / "ready.json", ready)
    while not stop.wait(1.0):
        if sup.ganesha is not None and sup.ganesha.poll() is not None:
            break  # ganesha died: tear down and report
    stats = sup.stop()
    _write_json(run / "stopped.json", {**stats, "time": time.time()})
    return 0


def start(run: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Start the supervisor for ``run`` (detached: it outlives this process) and wait until it
    serves; returns its ``ready.json``.  Raises :class:`InstantExportFailed` with its reason."""
    require_ganesha()
    spec = {**spec, "clients": check_clients(list(spec.get("clients") or []))}
    run.mkdir(parents=True, exist_ok=True)
    _write_json(run / "spec.json", spec)
    log = open(run / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    # the export needs the repository's password (VMKEEP_PASSWORD*), never vSphere's or a guest's
    # (a password from VMKEEP_PASSWORD_COMMAND handed over through a pipe: not asked again)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VMKEEP_VC_", "VMKEEP_GUEST_"))}
    handed = hand_over_password(env)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmkeep.browse.instant_export", str(run)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env,
            pass_fds=handed,
        )
    finally:
        log.close()
        for fd in handed:
            os.close(fd)
    deadline = time.monotonic() + START_TIMEOUT * 2
    while True:
        if (run / "ready.json").exists():
            return dict(json.loads((run / "ready.json").read_text()))
        if (run / "failed.json").exists() or proc.poll() is not None:
            proc.wait()
            try:
                reason = json.loads((run / "failed.json").read_text())["error"]
            except (OSError, ValueError, KeyError):
                reason = f"supervisor exited with status {proc.returncode} (see {run})"
            raise InstantExportFailed(reason)
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            raise InstantExportFailed(f"the export did not start (see {run}/supervisor.log)")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie awaiting its parent's wait counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    except OSError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(run: Path, pid: int) -> dict[str, Any]:
    """Stop the supervisor ``pid`` of ``run`` and wait for it; returns ``stopped.json`` (empty
    when it was already gone)."""
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT * 4
        while alive(pid) and time.monotonic() < deadline:
            if (run / "stopped.json").exists():
                break
            time.sleep(0.1)
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)
    try:
        return dict(json.loads((run / "stopped.json").read_text()))
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))
