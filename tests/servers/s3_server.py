"""pytest plugin: ``s3_server`` — moto's S3-compatible server on loopback (session scope).

:func:`moto` is the plain context manager behind the fixture (the benchmarks start it too).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.server_common import free_port, need, stop, wait_port


@dataclass
class S3Server:
    port: int
    bucket: str = "vmkeep-test"

    def url(self, sub: str, port: int | None = None) -> str:
        return f"s3://{self.bucket}/{sub}"

    def options(self, port: int | None = None) -> dict[str, object]:
        return {
            "key": "testing",
            "secret": "testing",
            "endpoint_url": f"http://127.0.0.1:{port or self.port}",
            "skip_instance_cache": True,
            "use_listings_cache": False,
            "config_kwargs": {
                "retries": {"max_attempts": 1},
                # hang guards: moto (Python) answers slowly on a loaded machine
                "connect_timeout": 60,
                "read_timeout": 60,
            },
        }


@contextmanager
def moto(tmp: Path) -> Iterator[S3Server]:
    """Run moto_server with one empty bucket until the block ends."""
    need(str(Path(sys.executable).parent / "moto_server"), "moto[server] (dev dependency)")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=out,
        )
    try:
        wait_port(port, proc, log)
        server = S3Server(port)
        import s3fs

        fs = s3fs.S3FileSystem(
            **{
                k: v
                for k, v in server.options().items()
                if k not in ("skip_instance_cache", "use_listings_cache")
            }
        )
        fs.mkdir(server.bucket)
        yield server
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto(tmp_path_factory.mktemp("moto")) as server:
        yield server
