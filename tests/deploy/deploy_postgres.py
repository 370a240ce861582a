"""A private PostgreSQL cluster for one test session (Debian's ``postgresql`` package).

:func:`start` runs ``initdb`` into a fresh folder (as the ``postgres`` user through ``runuser``
when the tests run as root, since PostgreSQL refuses to run as root), starts the server on a
free loopback port with trust authentication for loopback only, creates the ``prefect``
database and returns a :class:`Postgres` whose ``url`` is a ``postgresql+asyncpg://`` URL for
``PREFECT_API_DATABASE_CONNECTION_URL``.  :meth:`Postgres.stop` stops it and removes the folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class Postgres:
    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://vmkeep@127.0.0.1:{self.port}/prefect"

    def stop(self) -> None:
        subprocess.run(
            _as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                       "stop"]),
            capture_output=True, check=False, timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> Postgres:
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL not installed (Debian package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="vmkeep-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = Postgres(bindir, root, _free_port())

    def run(cmd: list[str]) -> None:
        result = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {result.stdout}{result.stderr}")

    run([str(bindir / "initdb"), "-D", str(pg.data), "-U", "vmkeep", "--auth=trust", "-E",
         "UTF8", "--no-sync"])
    options = (f"-p {pg.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} "
               "-c fsync=off -c max_connections=200")
    run([str(bindir / "pg_ctl"), "-D", str(pg.data), "-l", str(root / "server.log"), "-o",
         options, "-w", "start"])
    run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "vmkeep", "-d",
         "postgres", "-c", "CREATE DATABASE prefect"])
    return pg
