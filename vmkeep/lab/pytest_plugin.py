"""pytest plugin: the session-scoped ``esx_lab`` fixture (registered from tests/conftest.py).

``esx_lab`` starts a fresh lab in a temporary state dir on a free loopback port (images come from
the shared cache, the binary from the build cache) and stops it at the end of the session. It
returns an :class:`EsxLab` with ``url``, ``host``, ``port``, ``user``, ``password``,
``thumbprint``, ``cafile``, ``vms`` (as ``vmkeep lab up --json``), ``datastores``, ``hosts``,
``client`` (:class:`~vmkeep.lab.client.LabClient`) and helpers: :meth:`EsxLab.connect`,
:meth:`EsxLab.vm`, :meth:`EsxLab.write`, :meth:`EsxLab.put_file`, :meth:`EsxLab.export_disk`,
:meth:`EsxLab.fault` (a context manager that clears the rule afterwards) and
:meth:`EsxLab.clear_faults`.

When Go or Debian's govmomi sources are missing, tests using it are skipped with one line saying
what to install — unless ``CI`` is set in the environment, where they fail instead.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from vmkeep.lab import runner
from vmkeep.lab.build import missing_prerequisites
from vmkeep.lab.client import LabClient


class EsxLab:
    """A running lab, as seen by tests."""

    def __init__(self, info: runner.LabInfo) -> None:
        self.info = info
        self.url = info.url
        self.host = info.host
        self.port = info.port
        self.user = info.user
        self.password = info.password
        self.thumbprint = info.thumbprint
        self.cafile = info.cafile
        self.vms = info.vms
        self.hosts = info.hosts
        self.datastores = info.datastores
        self.datacenter = info.datacenter
        self.state_dir = Path(info.state_dir)
        self.client: LabClient = info.client()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)

    def connect(self) -> Any:
        """A pyVmomi ServiceInstance logged in with TLS verified against the lab's certificate."""
        from pyVim.connect import SmartConnect

        return SmartConnect(
            host=self.host,
            port=self.port,
            user=self.user,
            pwd=self.password,
            sslContext=self.ssl_context(),
        )

    def vm(self, name: str) -> dict[str, Any]:
        return self.info.vm(name)

    def datastore_dir(self, name: str) -> Path:
        for ds in self.datastores:
            if ds["name"] == name:
                return Path(ds["local_path"])
        raise KeyError(name)

    def write(
        self,
        vm: str,
        percent: float = 0,
        disk: int = 0,
        seed: int = 0,
        at: tuple[int, int] | None = None,
        trim: bool = False,
    ) -> list[tuple[int, int]]:
        return self.client.write(vm, percent, disk=disk, seed=seed, at=at, trim=trim)

    def put_file(self, vm: str, guest_path: str, data: bytes) -> None:
        self.client.put_file(vm, guest_path, data)

    def read_disk(
        self,
        vm: str,
        disk: int = 0,
        snapshot: str | None = None,
        offset: int = 0,
        length: int | None = None,
    ) -> bytes:
        return self.client.read_disk(vm, disk, snapshot, offset, length)

    def export_disk(self, vm: str, disk: int, to: Path, snapshot: str | None = None) -> int:
        """``vmkeep lab export-disk``: the lab's own view of the disk, written sparse to ``to``."""
        return self.client.export_disk(vm, disk, to, snapshot)

    @contextmanager
    def fault(
        self, kind: str, target: str | None = None, count: int = 1, **kw: Any
    ) -> Iterator[dict]:
        rule = self.client.add_fault(kind, target, count, **kw)
        try:
            yield rule
        finally:
            self.client.clear_faults(kind)

    def clear_faults(self) -> None:
        self.client.clear_faults()


def lab_unavailable_reason() -> str | None:
    return missing_prerequisites()


@pytest.fixture(scope="session")
def esx_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsxLab]:
    why = lab_unavailable_reason()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"ESX lab needed on CI: {why}")
        pytest.skip(f"ESX lab: {why}")
    state = tmp_path_factory.mktemp("esx-lab")
    info = runner.up(n_small=6, port=0, state=state)
    try:
        yield EsxLab(info)
    finally:
        runner.down(state)
