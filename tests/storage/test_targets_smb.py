"""What is particular to smb:// targets (Samba's smbd on loopback): smbprotocol's errors mapped to
the typed storage errors, a rename over an existing object, server-side times, listings that fail
instead of coming back short.  The generic contract runs in test_backend_contract.py."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.servers.smbd_server import READONLY_SHARE, SmbServer
from tests.storage.storage_helpers import tmpfs
from vmkeep.storage.backend import TEMP_MARKER, Backend, open_backend
from vmkeep.storage.backends.fsspec_backend import FsspecBackend
from vmkeep.storage.errors import TargetFull, TargetPermissionDenied, TargetUnreachable

#: stops a hang (a listing that loops) sooner than the suite's 600 s; a loaded machine is slower
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def sub() -> str:
    return f"smb-{uuid.uuid4().hex}"


@pytest.fixture
def inner(smb_server: SmbServer, sub: str) -> FsspecBackend:
    """The bare SMB backend (no retries), so that each failure shows at once."""
    backend: Any = open_backend(smb_server.url(sub), smb_server.options())
    inner: FsspecBackend = backend.inner
    return inner


def test_wrong_credentials_are_permission_denied(smb_server: SmbServer, sub: str) -> None:
    options = {**smb_server.options(), "username": "vmkeep-nobody", "password": "nope"}
    with pytest.raises(TargetPermissionDenied):
        open_backend(smb_server.url(sub), options)


def test_missing_share_fails_at_once(smb_server: SmbServer) -> None:
    url = f"smb://127.0.0.1:{smb_server.port}/no-such-share/repo"
    with pytest.raises(TargetUnreachable, match="no such share"):
        open_backend(url, smb_server.options())  # smbclient's makedirs would loop forever


def test_read_only_share_is_permission_denied(smb_server: SmbServer, sub: str) -> None:
    url = smb_server.url(sub).replace("/share/", f"/{READONLY_SHARE}/")
    backend: Any = open_backend(url, smb_server.options())
    with pytest.raises(TargetPermissionDenied):
        backend.inner.put("config", b"x")


@pytest.fixture
def full_dir(smb_server: SmbServer, sub: str) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted inside the share."""
    mnt = smb_server.root / sub
    mnt.mkdir()
    with tmpfs(mnt, "1m"):
        yield mnt


def test_full_share_is_target_full(full_dir: Path, inner: Backend) -> None:
    with pytest.raises(TargetFull):
        inner.put("packs/ab/big", os.urandom(3 << 20))
    assert not inner.exists("packs/ab/big")
    leftovers = [n for _, _, files in os.walk(full_dir) for n in files if TEMP_MARKER in n]
    assert leftovers == []
    inner.put("packs/ab/small", b"fits")  # the share works again once the object fits
    assert inner.get("packs/ab/small") == b"fits"


def test_overwrite_is_one_rename(inner: FsspecBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    inner.put("config", b"one")

    def no_remove(path: str) -> None:
        raise AssertionError(f"removed {path}: the object would be missing for a moment")

    monkeypatch.setattr(inner.fs, "rm_file", no_remove)
    inner.put("config", b"two!")
    assert inner.get("config") == b"two!"


def test_list_times_are_the_servers_mtimes(smb_server: SmbServer, sub: str, inner: Backend) -> None:
    inner.put("index/a.parquet", b"abc")
    old = time.time() - 7200
    os.utime(smb_server.root / sub / "index" / "a.parquet", (time.time(), old))
    inner.put("index/b.parquet", b"defg")
    times = {k: (size, t) for k, size, t in inner.list_times("index")}
    assert times["index/a.parquet"][0] == 3 and times["index/b.parquet"][0] == 4
    assert abs((times["index/a.parquet"][1] or 0) - old) < 1  # mtime, not atime
    assert abs((times["index/b.parquet"][1] or 0) - time.time()) < 60


def test_a_failing_sub_directory_fails_the_listing(
    inner: FsspecBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsspec's ``find`` would leave the sub-directory out and return a short listing."""
    for i in range(3):
        inner.put(f"packs/0{i}/p{i}", b"x")
    fs = inner.fs
    real_ls = fs.ls

    def flaky_ls(path: str, detail: bool = True, **kwargs: Any) -> Any:
        if path.endswith("/packs/01"):
            raise ConnectionResetError(104, "injected reset")
        return real_ls(path, detail=detail, **kwargs)

    monkeypatch.setattr(fs, "ls", flaky_ls)
    with pytest.raises(TargetUnreachable):
        list(inner.list("packs"))
    monkeypatch.undo()
    assert sorted(k for k, _ in inner.list("packs")) == [f"packs/0{i}/p{i}" for i in range(3)]


def test_temporary_files_are_listed_apart(smb_server: SmbServer, sub: str, inner: Backend) -> None:
    inner.put("packs/aa/p", b"x")
    (smb_server.root / sub / "packs" / "aa" / f"{TEMP_MARKER}dead").write_bytes(b"half")
    assert [k for k, _ in inner.list("packs")] == ["packs/aa/p"]
    assert [k for k, _, _ in inner.list_temporary("packs")] == [f"packs/aa/{TEMP_MARKER}dead"]


def test_parallel_reads_of_one_object_share_it(smb_server: SmbServer, sub: str) -> None:
    """fsspec opens SMB files exclusively by default: concurrent restores reading one pack got
    sharing violations and waited out retries."""
    backend: Any = open_backend(smb_server.url(sub), smb_server.options())
    payload = os.urandom(1 << 20)
    backend.put("packs/aa/p", payload)

    def read(i: int) -> bytes:
        return bytes(backend.get("packs/aa/p", i * 4096, 65536))

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(read, range(40)))
    assert got == [payload[i * 4096 : i * 4096 + 65536] for i in range(40)]
    assert backend.retries == 0
