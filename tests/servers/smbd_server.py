"""pytest plugin: ``smb_server`` — Samba's smbd on loopback (session scope), password login.

:func:`smbd` is the plain context manager behind the fixture (the benchmarks start it too).
smbd runs in the foreground from a private configuration under a temporary directory, on a free
port, and is stopped by its process id.  It needs root to serve a share as a local user: other
users skip (CI runs as root).
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.server_common import free_port, need, stop, wait_port

SMBD = "/usr/sbin/smbd"
SHARE = "share"
READONLY_SHARE = "readonly"  # the same directory, read-only


@dataclass
class SmbServer:
    port: int
    user: str
    password: str
    root: Path  # the share's directory on this machine

    def url(self, sub: str, port: int | None = None) -> str:
        """``smb://127.0.0.1:PORT/share/SUB`` — no credentials: they go in :meth:`options`."""
        return f"smb://127.0.0.1:{port or self.port}/{SHARE}/{sub.lstrip('/')}"

    def options(self, port: int | None = None) -> dict[str, object]:
        return {
            "username": self.user,
            "password": self.password,
            "port": port or self.port,
            "register_session_retries": 0,
            "timeout": 10,
        }


@contextmanager
def smbd(tmp: Path) -> Iterator[SmbServer]:
    """Run smbd serving ``tmp/share`` until the block ends."""
    smbd_bin = need(SMBD, "samba")
    if os.geteuid() != 0:
        pytest.skip("smbd needs root to serve a share as a local user")
    for d in ("private", "lock", "state", "cache", "pid", "ncalrpc", SHARE):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = tmp / "smb.conf"
    conf.write_text(
        "[global]\n"
        f"  smb ports = {port}\n  interfaces = 127.0.0.1\n  bind interfaces only = yes\n"
        f"  private dir = {tmp / 'private'}\n  lock directory = {tmp / 'lock'}\n"
        f"  state directory = {tmp / 'state'}\n  cache directory = {tmp / 'cache'}\n"
        f"  pid directory = {tmp / 'pid'}\n  ncalrpc dir = {tmp / 'ncalrpc'}\n"
        f"  log file = {tmp / 'smbd.log'}\n  passdb backend = tdbsam:{tmp / 'passdb.tdb'}\n"
        "  server role = standalone server\n  map to guest = never\n  disable netbios = yes\n"
        "  server min protocol = SMB2_10\n  load printers = no\n  printing = bsd\n"
        "  printcap name = /dev/null\n  disable spoolss = yes\n"
        f"[{SHARE}]\n"
        f"  path = {tmp / SHARE}\n  read only = no\n"
        f"[{READONLY_SHARE}]\n"
        f"  path = {tmp / SHARE}\n  read only = yes\n"
    )
    user, password = getpass.getuser(), "vmkeep-Test-pw1"
    subprocess.run(
        ["smbpasswd", "-c", str(conf), "-a", "-s", user],
        input=f"{password}\n{password}\n".encode(),
        check=True,
        capture_output=True,
    )
    log = tmp / "smbd.stdout"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                smbd_bin,
                "--foreground",
                "--no-process-group",
                f"--configfile={conf}",
                "--debug-stdout",
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,  # smbd signals its whole process group when it stops
        )
    try:
        wait_port(port, proc, log)
        yield SmbServer(port, user, password, tmp / SHARE)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def smb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmbServer]:
    with smbd(tmp_path_factory.mktemp("smbd")) as server:
        yield server
