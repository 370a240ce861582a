"""Real servers on loopback for the remote-source tests: OpenSSH's sshd and Samba's smbd.

Each starts in the foreground from a private configuration under a temporary directory, on a
free port, and is stopped by its process id.  A missing binary skips the test with a clear
message — except under CI (``CI`` set), where it fails: CI must install ``.ci/apt-packages``.
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
from servers.server_common import free_port, need, stop, wait_port

SSHD = "/usr/sbin/sshd"
SMBD = "/usr/sbin/smbd"


@dataclass
class SshServer:
    port: int
    user: str
    key_file: Path

    def url(self, path: Path | str) -> str:
        return f"sftp://{self.user}@127.0.0.1:{self.port}{path}"

    @property
    def options(self) -> dict[str, str]:
        return {"key_filename": str(self.key_file)}


@contextmanager
def sshd(tmp: Path) -> Iterator[SshServer]:
    need(SSHD, "openssh-server")
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)],
                       check=True)
    (tmp / "authorized_keys").write_text((tmp / "client.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host'}\n"
        f"PidFile {tmp / 'sshd.pid'}\nAuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin yes\nSubsystem sftp internal-sftp\n"
    )
    log = tmp / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=out)
    try:
        wait_port(port, proc, log)
        yield SshServer(port, getpass.getuser(), tmp / "client")
    finally:
        stop(proc)


@dataclass
class SmbServer:
    port: int
    user: str
    password: str
    share_dir: Path

    def url(self, sub: str = "") -> str:
        return f"smb://127.0.0.1:{self.port}/share{sub}"

    @property
    def options(self) -> dict[str, object]:
        return {"username": self.user, "password": self.password, "port": self.port,
                "register_session_retries": 0}


@contextmanager
def smbd(tmp: Path) -> Iterator[SmbServer]:
    need(SMBD, "samba")
    if os.geteuid() != 0:
        pytest.skip("smbd needs root to serve a share as a local user")
    share = tmp / "share"
    for d in ("private", "lock", "state", "cache", "pid", "ncalrpc", "share"):
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
        "[share]\n"
        f"  path = {share}\n  read only = no\n"
    )
    user, password = getpass.getuser(), "vmkeep-Test-pw1"
    subprocess.run(["smbpasswd", "-c", str(conf), "-a", "-s", user],
                   input=f"{password}\n{password}\n".encode(), check=True, capture_output=True)
    log = tmp / "smbd.stdout"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [SMBD, "--foreground", "--no-process-group", f"--configfile={conf}",
             "--debug-stdout"],
            stdout=out, stderr=out,
            start_new_session=True,  # smbd signals its whole process group when it stops
        )
    try:
        wait_port(port, proc, log)
        yield SmbServer(port, user, password, share)
    finally:
        stop(proc)
