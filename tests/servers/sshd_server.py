"""pytest plugin: ``sftp_server`` — OpenSSH's sshd on loopback (session scope), key login.

:func:`sshd` is the plain context manager behind the fixture (the benchmarks start it too).
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


@dataclass
class SftpServer:
    port: int
    user: str
    key_file: Path
    root: Path

    def url(self, sub: str, port: int | None = None) -> str:
        return f"sftp://{self.user}@127.0.0.1:{port or self.port}{self.root}/{sub}"

    def options(self, port: int | None = None) -> dict[str, object]:
        return {
            "key_filename": str(self.key_file),
            "look_for_keys": False,
            "allow_agent": False,
            "timeout": 10,
        }


@contextmanager
def sshd(tmp: Path) -> Iterator[SftpServer]:
    """Run sshd (SFTP, key login for the current user) until the block ends."""
    sshd_bin = need("/usr/sbin/sshd", "openssh-server")
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True
        )
    (tmp / "authorized_keys").write_text((tmp / "client.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host'}\n"
        f"PidFile {tmp / 'sshd.pid'}\nAuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin yes\nSubsystem sftp internal-sftp\n"
        "MaxStartups 100\nMaxSessions 100\n"
    )
    root = tmp / "data"
    root.mkdir()
    log = tmp / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stdout=out, stderr=out)
    try:
        wait_port(port, proc, log)
        yield SftpServer(port, getpass.getuser(), tmp / "client", root)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    with sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
