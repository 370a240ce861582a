"""Start, inspect and stop the lab (``vmkeep lab up|status|down``).

Contract:

* :func:`up` builds the binary (cached), lays out fresh datastores from cached images, starts the
  lab in the background on loopback over HTTPS and returns a :class:`LabInfo`; when a lab is
  already running in the state dir it is reused (idempotent).
* :func:`status` returns the running lab's :class:`LabInfo` or None; :func:`down` stops it
  (SIGTERM, then SIGKILL) and is a no-op when nothing runs.

The state dir holds ``spec.json``, ``ready.json``, ``lab.json`` (the info document),
``esxsim.pid``, ``esxsim.log``, ``cert.pem``/``key.pem`` and ``datastores/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmkeep.lab import access, certs
from vmkeep.lab.build import ensure_binary
from vmkeep.lab.client import LabClient
from vmkeep.lab.errors import LabError
from vmkeep.lab.inventory import layout
from vmkeep.lab.paths import state_dir

DEFAULT_USER = "administrator@vsphere.local"


@dataclass
class LabInfo:
    """How to reach a running lab (the ``--json`` document of ``vmkeep lab up``)."""

    url: str
    host: str
    port: int
    user: str
    password: str
    thumbprint: str
    cafile: str
    datacenter: str
    vms: list[dict[str, Any]]
    hosts: list[dict[str, Any]] = field(default_factory=list)
    datastores: list[dict[str, Any]] = field(default_factory=list)
    pid: int = 0
    state_dir: str = ""
    #: the virtual tape library (:mod:`vmkeep.lab.vtl`), or None when tgt is not installed
    tape: dict[str, Any] | None = None
    #: extra users (:mod:`vmkeep.lab.access`): name, password, the privileges each lacks
    users: list[dict[str, Any]] = field(default_factory=list)
    #: how many lightweight VMs (``light-0001``…, no disks, folder ``light``) the lab holds
    light_vms: int = 0
    #: data-mover VMs for hot-add: name, moref, bios_uuid, host, device_dir (esxsim/hotadd.go)
    movers: list[dict[str, Any]] = field(default_factory=list)
    #: True when started with ``--lenient`` (the old, permissive HTTP behaviour; debugging only)
    lenient: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def client(self) -> LabClient:
        return LabClient(f"https://{self.host}:{self.port}", self.user, self.password, self.cafile)

    def vm(self, name: str) -> dict[str, Any]:
        for v in self.vms:
            if v["name"] == name:
                return v
        raise KeyError(name)


def _pid_alive(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"esxsim" in cmd


def _read_pid(state: Path) -> int:
    try:
        return int((state / "esxsim.pid").read_text().strip())
    except (OSError, ValueError):
        return 0


def status(state: Path | None = None) -> LabInfo | None:
    """The running lab's info, or None."""
    state = state or state_dir()
    pid = _read_pid(state)
    if not pid or not _pid_alive(pid):
        return None
    try:
        doc = json.loads((state / "lab.json").read_text())
    except (OSError, ValueError):
        return None
    from vmkeep.lab import vtl

    tape = vtl.load(state / "vtl")
    doc["tape"] = tape.to_json() if tape is not None else None
    return LabInfo(**doc)


def shell_env(info: LabInfo) -> str:
    """Shell ``export`` lines that point vmkeep's vCenter options at the running lab.

    The password goes into ``password`` beside the lab's state (mode 0600, rewritten on every
    call, so a lab restarted with a new password is followed) and is named by
    ``VMKEEP_VC_PASSWORD_FILE``: it never appears on a command line or in the output."""
    folder = Path(info.state_dir) if info.state_dir else state_dir()
    secret = folder / "password"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(info.password + "\n")
    names = {
        "VMKEEP_VCENTER": info.url,
        "VMKEEP_VC_USER": info.user,
        "VMKEEP_VC_CAFILE": info.cafile,
        "VMKEEP_VC_PASSWORD_FILE": str(secret),
    }
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in names.items())


def _info(state: Path, ready: dict[str, Any], spec_vms: list[dict[str, Any]], pid: int) -> LabInfo:
    by_name = {v["name"]: v for v in spec_vms}
    vms = []
    for v in ready["vms"]:
        s = by_name.get(v["name"], {})
        vms.append(
            {
                "name": v["name"],
                "moref": v["moref"],
                "guest": v["guest"],
                "guest_id": v["guest_id"],
                "host": v["host"],
                "template": v["template"],
                "datastore": s.get("datastore"),
                "disks": [
                    {
                        "key": d["key"],
                        "capacity": d["capacity"],
                        "datastore_path": d["datastore_path"],
                        "local_path": d["local_path"],
                        "thin": d["thin"],
                        "independent": d["independent"],
                    }
                    for d in v["disks"]
                ],
                "filesystems": s.get("filesystems", []),
                "files": s.get("files", {}),
            }
        )
    return LabInfo(
        url=ready["url"],
        host="127.0.0.1",
        port=ready["port"],
        user=ready["user"],
        password=ready["password"],
        thumbprint=_sha256_thumbprint(state / "cert.pem"),
        cafile=str(state / "cert.pem"),
        datacenter=ready["datacenter"],
        vms=vms,
        hosts=ready["hosts"],
        datastores=ready["datastores"],
        movers=ready.get("movers") or [],
        pid=pid,
        state_dir=str(state),
        users=ready.get("users") or [],
        light_vms=ready.get("light_vms", 0),
    )


def up(
    n_small: int = 4,
    port: int = 0,
    state: Path | None = None,
    timeout: float = 90,
    light_vms: int = 0,
    *,
    lenient: bool = False,
    host_concurrency: int = 4,
    dc2_datastores: Sequence[Mapping[str, Any]] = (),
    dc2_first: bool = False,
) -> LabInfo:
    """Start the lab (or return the running one); ``light_vms`` adds that many VMs without
    disks (inventory-at-scale tests).

    The lab is strict by default (see ``esxsim/strict.go``: datacenter in a folder, one HTTPS
    endpoint per host, file locks, service tickets, throttling at ``host_concurrency`` reads
    per host); ``lenient=True`` keeps the old permissive HTTP behaviour, for debugging only.

    ``dc2_datastores`` (``{"name", "type", "free"}`` each) gives the second datacenter, DC2, a
    standalone host (``esx21.lab.local``) mounting datastores of those names — usually names
    DC1 uses too, as vSphere allows across datacenters; ``dc2_first`` lists DC2 before DC1 in
    the inventory (``esxsim/otherdc.go``).
    """
    state = state or state_dir()
    running = status(state)
    if running is not None:
        return running
    binary = ensure_binary()
    state.mkdir(parents=True, exist_ok=True)
    for stale in ("ready.json", "lab.json", "esxsim.pid"):
        (state / stale).unlink(missing_ok=True)
    shutil.rmtree(state / "datastores", ignore_errors=True)
    for tmp in state.glob("guest*-*"):
        tmp.unlink(missing_ok=True)
    cert, key = state / "cert.pem", state / "key.pem"
    if not cert.exists() or not key.exists():
        certs.generate(cert, key)
    datastores, vms = layout(state, n_small)
    password = secrets.token_urlsafe(18)
    spec = {
        "listen": f"127.0.0.1:{port}",
        "cert_file": str(cert),
        "key_file": str(key),
        "user": DEFAULT_USER,
        "password": password,
        "state_dir": str(state),
        "datastores": datastores,
        "vms": vms,
        "users": access.users(),
        "tags": access.tags({v["name"] for v in vms}),
        "light_vms": light_vms,
        "lenient": lenient,
        "host_concurrency": host_concurrency,
        "dc2_datastores": [{**d, "dir": str(state / "dc2" / str(d["name"]))}
                           for d in dc2_datastores],
        "dc2_first": dc2_first,
    }
    timeout += light_vms * 0.05
    spec_path = state / "spec.json"
    fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    ready_path = state / "ready.json"
    log = open(state / "esxsim.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [str(binary), "-spec", str(spec_path), "-ready", str(ready_path)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=state,
        env={**os.environ, "VMKEEP_LAB_PYTHON": sys.executable},  # nasds.go's NFS client
    )
    log.close()
    deadline = time.monotonic() + timeout
    while not ready_path.exists():
        if proc.poll() is not None:
            tail = (state / "esxsim.log").read_text(errors="replace")[-1500:]
            raise LabError(f"lab exited with status {proc.returncode}: {tail.strip()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise LabError(f"lab did not start within {timeout:.0f}s (see {state / 'esxsim.log'})")
        time.sleep(0.05)
    (state / "esxsim.pid").write_text(str(proc.pid))
    ready = json.loads(ready_path.read_text())
    info = _info(state, ready, vms, proc.pid)
    info.lenient = lenient
    info.tape = _start_tape(state)
    fd = os.open(state / "lab.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info.to_json(), f, indent=2)
    return info


def _start_tape(state: Path) -> dict[str, Any] | None:
    """Start (or find) the lab's VTL; None when tgt is missing or does not start."""
    from vmkeep.lab import vtl

    if vtl.missing_tools():
        return None
    try:
        return vtl.ensure(state / "vtl").to_json()
    except LabError:
        return None


def down(state: Path | None = None, timeout: float = 10) -> bool:
    """Stop the lab (and its VTL); True when one was running."""
    state = state or state_dir()
    from vmkeep.lab import vtl

    vtl.stop_running(state / "vtl")
    pid = _read_pid(state)
    if not pid or not _pid_alive(pid):
        (state / "esxsim.pid").unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        _reap(pid)
    for stale in ("esxsim.pid", "ready.json", "lab.json"):
        (state / stale).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _sha256_thumbprint(cert_pem: Path) -> str:
    """The certificate's SHA-256 fingerprint as ``AA:BB:…`` (what ``--thumbprint`` pins)."""
    import hashlib
    import ssl

    der = ssl.PEM_cert_to_DER_cert(cert_pem.read_text())
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
