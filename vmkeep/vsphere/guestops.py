"""Guest operations through VMware Tools: run programs and scripts, copy files in and out.

Used for pre-freeze / post-thaw scripts around a backup snapshot and for restoring files into a
running guest over the LAN.  Guest credentials are a :class:`Credentials` (never logged).

Contracts:

* :func:`run_program` starts a program (``StartProgramInGuest``, **not** retried on a dropped
  connection: it may have started) and polls ``ListProcessesInGuest`` (idempotent) until it
  exits.  After ``timeout`` the process is terminated and :class:`GuestTimeout` raised; a
  non-zero exit raises :class:`GuestProgramFailed` when ``check``.
* :func:`run_script` uploads the script to a guest temp file, runs it with ``/bin/sh`` or
  ``cmd.exe`` redirecting output to another temp file, downloads the output and deletes both.
* :func:`upload_file` / :func:`download_file` use ``InitiateFileTransferToGuest`` /
  ``…FromGuest`` and an HTTPS PUT / GET to the returned URL (the URL is a one-time ticket; no
  session cookie is sent).  Uploads overwrite only with ``overwrite=True``.  The URL points at
  the ESXi host running the VM (``https://*/…``: ``*`` is replaced by the host's address, see
  :mod:`.hosts`) and its TLS is verified against that host's own certificate
  (``HostSystem.config.certificate``), not vCenter's; an unreachable host raises
  :class:`GuestOperationFailed` naming it.
* Guest login failures raise :class:`GuestOperationFailed` without the password; "tools not
  running" is a transient :class:`GuestToolsUnavailable`.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import time
from dataclasses import dataclass
from typing import IO, Any, Literal

from vmkeep.vsphere import hosts
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import (
    GuestOperationFailed,
    GuestProgramFailed,
    GuestTimeout,
    GuestToolsUnavailable,
    HostUnreachable,
    VSphereError,
    is_fault,
)
from vmkeep.vsphere.httpclient import HTTPClient

GuestOS = Literal["linux", "windows"]


@dataclass(frozen=True)
class GuestProgramResult:
    pid: int
    exit_code: int
    seconds: float
    output: bytes | None = None


def _auth(creds: Credentials) -> Any:
    from pyVmomi import vim

    return vim.vm.guest.NamePasswordAuthentication(
        username=creds.user, password=creds.reveal(), interactiveSession=False
    )


def _guest_call(session: Session, vm: Any, op: str, fn: Any, *args: Any, **kw: Any) -> Any:
    """Call a guest-operations method, translating guest faults (the auth object stays inside)."""
    from pyVmomi import vim

    vm_name = getattr(vm, "_moId", "?")
    try:
        return session.call(fn, vm, *args, what=f"guest {op}", **kw)
    except VSphereError as exc:
        if is_fault(exc, "InvalidGuestLogin", "GuestPermissionDenied"):
            failed: VSphereError = GuestOperationFailed(op, vm_name, "guest login refused")
        elif is_fault(exc, "GuestOperationsUnavailable", "ToolsUnavailable"):
            failed = GuestToolsUnavailable(op, vm_name, "VMware Tools not running")
        else:
            failed = GuestOperationFailed(op, vm_name, exc.get_message())
        failed.fault_type = exc.fault_type
        raise failed from None
    except vim.fault.InvalidGuestLogin:  # pragma: no cover - session.call translates first
        raise GuestOperationFailed(op, vm_name, "guest login refused") from None


def _managers(session: Session) -> tuple[Any, Any]:
    gom = session.content.guestOperationsManager
    return gom.processManager, gom.fileManager


def run_program(
    session: Session,
    vm: Any,
    creds: Credentials,
    program: str,
    arguments: str = "",
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
    poll: float = 0.5,
    check: bool = True,
) -> GuestProgramResult:
    """Run ``program arguments`` in the guest and wait for its exit code (see module doc)."""
    from pyVmomi import vim

    processes, _ = _managers(session)
    spec = vim.vm.guest.ProcessManager.ProgramSpec(
        programPath=program, arguments=arguments, workingDirectory=cwd,
        envVariables=[f"{k}={v}" for k, v in (env or {}).items()] or None,
    )
    started = time.monotonic()
    pid = int(_guest_call(session, vm, "start", processes.StartProgramInGuest, _auth(creds), spec))
    delay = poll
    while True:
        infos = _guest_call(
            session, vm, "list", processes.ListProcessesInGuest, _auth(creds), [pid],
            idempotent=True,
        )
        info = next((p for p in infos or [] if int(p.pid) == pid), None)
        if info is not None and info.endTime is not None:
            code = int(info.exitCode or 0)
            result = GuestProgramResult(pid, code, time.monotonic() - started)
            if check and code != 0:
                raise GuestProgramFailed(program, getattr(vm, "_moId", "?"), code)
            return result
        if time.monotonic() - started > timeout:
            with contextlib.suppress(VSphereError):
                _guest_call(
                    session, vm, "terminate", processes.TerminateProcessInGuest, _auth(creds), pid
                )
            raise GuestTimeout(program, getattr(vm, "_moId", "?"), timeout)
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


def temp_file(session: Session, vm: Any, creds: Credentials, suffix: str = "") -> str:
    _, files = _managers(session)
    path = _guest_call(
        session, vm, "mktemp", files.CreateTemporaryFileInGuest, _auth(creds), "vmkeep-", suffix
    )
    return str(path)


def delete_file(session: Session, vm: Any, creds: Credentials, guest_path: str) -> None:
    _, files = _managers(session)
    _guest_call(session, vm, "delete", files.DeleteFileInGuest, _auth(creds), guest_path)


def make_directory(
    session: Session, vm: Any, creds: Credentials, guest_path: str, *, parents: bool = True
) -> None:
    """Create a directory in the guest (existing directories are fine)."""
    _, files = _managers(session)
    try:
        _guest_call(
            session, vm, "mkdir", files.MakeDirectoryInGuest, _auth(creds), guest_path, parents
        )
    except GuestOperationFailed as exc:
        if not is_fault(exc, "FileAlreadyExists"):
            raise


def _transfer(
    session: Session, vm: Any, op: str, url: str, client: HTTPClient | None, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    """Send a guest transfer request to the host running ``vm`` (see the module docstring)."""
    http = client or HTTPClient(session)
    host_ref = session.get(vm, "runtime.host")
    endpoint = hosts.host_endpoint(session, session.get(host_ref, "name")) if host_ref else None
    vm_name = getattr(vm, "_moId", "?")
    if endpoint is None or not endpoint.serves(url):  # e.g. a lenient lab's vCenter URL
        return http.request(url=url, cookie=False, **kw)
    try:
        return http.request(
            url=endpoint.resolve(url), cookie=False, context=endpoint.ssl_context(), **kw
        )
    except HostUnreachable as exc:
        raise GuestOperationFailed(
            op, vm_name, f"ESXi host {endpoint.label} running the VM is unreachable from this "
            f"data mover ({exc.get_message()}); guest transfers need HTTPS (port 443) to each host"
        ) from None


def upload_file(
    session: Session,
    vm: Any,
    creds: Credentials,
    guest_path: str,
    fileobj: IO[bytes],
    size: int,
    *,
    overwrite: bool = False,
    client: HTTPClient | None = None,
) -> None:
    """Copy ``size`` bytes from ``fileobj`` to ``guest_path`` in the running guest."""
    from pyVmomi import vim

    _, files = _managers(session)
    attrs = vim.vm.guest.FileManager.FileAttributes()
    url = _guest_call(
        session, vm, "upload", files.InitiateFileTransferToGuest, _auth(creds), guest_path,
        attrs, size, overwrite,
    )
    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    _transfer(
        session, vm, "upload", str(url), client, method="PUT", headers=headers, body=fileobj,
        idempotent=hasattr(fileobj, "seek"), what=f"upload {guest_path}",
    )


def download_file(
    session: Session,
    vm: Any,
    creds: Credentials,
    guest_path: str,
    out: IO[bytes],
    *,
    client: HTTPClient | None = None,
) -> int:
    """Copy ``guest_path`` from the guest into ``out``; returns the byte count."""
    _, files = _managers(session)
    info = _guest_call(
        session, vm, "download", files.InitiateFileTransferFromGuest, _auth(creds), guest_path,
        idempotent=True,
    )
    _, _, data = _transfer(
        session, vm, "download", str(info.url), client, method="GET", what=f"download {guest_path}"
    )
    if info.size is not None and len(data) != int(info.size):
        raise GuestOperationFailed("download", getattr(vm, "_moId", "?"), "short transfer")
    out.write(data)
    return len(data)


def _command(guest_os: GuestOS, script: str, output: str) -> tuple[str, str]:
    if guest_os == "windows":
        return r"C:\Windows\System32\cmd.exe", f'/c ""{script}" > "{output}" 2>&1"'
    inner = f"/bin/sh {shlex.quote(script)} > {shlex.quote(output)} 2>&1"
    return "/bin/sh", f"-c {shlex.quote(inner)}"


def run_script(
    session: Session,
    vm: Any,
    creds: Credentials,
    script: str,
    *,
    guest_os: GuestOS = "linux",
    timeout: float = 600.0,
    check: bool = True,
) -> GuestProgramResult:
    """Upload ``script``, run it, return its exit code and combined output (temp files removed)."""
    suffix = ".cmd" if guest_os == "windows" else ".sh"
    body = script.encode() if guest_os != "windows" else script.replace("\n", "\r\n").encode()
    script_path = temp_file(session, vm, creds, suffix)
    output_path = temp_file(session, vm, creds, ".out")
    try:
        upload_file(session, vm, creds, script_path, io.BytesIO(body), len(body), overwrite=True)
        program, args = _command(guest_os, script_path, output_path)
        try:
            result = run_program(
                session, vm, creds, program, args, timeout=timeout, check=False
            )
        finally:
            buf = io.BytesIO()
            with contextlib.suppress(VSphereError):
                download_file(session, vm, creds, output_path, buf)
        result = GuestProgramResult(result.pid, result.exit_code, result.seconds, buf.getvalue())
        if check and result.exit_code != 0:
            raise GuestProgramFailed("script", getattr(vm, "_moId", "?"), result.exit_code)
        return result
    finally:
        for path in (script_path, output_path):
            with contextlib.suppress(VSphereError):
                delete_file(session, vm, creds, path)
