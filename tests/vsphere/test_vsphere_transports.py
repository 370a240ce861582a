"""Disk reading over HTTPS Range requests and direct mounts, with drops and short reads."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from tests.vsphere.vsphere_helpers import Cert, FakeSession, RangeServer
from vmkeep.disks.errors import UnsafeDescriptorError
from vmkeep.vsphere.errors import (
    DatastoreIOError,
    NotFound,
    RangeIgnored,
    TLSVerificationFailed,
    UnsupportedDisk,
)
from vmkeep.vsphere.httpclient import HTTPClient, folder_url
from vmkeep.vsphere.inventory import VirtualDisk
from vmkeep.vsphere.tls import TLSOptions, build_ssl_context
from vmkeep.vsphere.transports import open_datastore_file, open_disk
from vmkeep.vsphere.vmconfig import upload_disk

CAP = 3 * 1024 * 1024 + 8192


def descriptor(sectors: int, extent: str = "vm-flat.vmdk", kind: str = "VMFS") -> bytes:
    return (
        f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
        f'createType="vmfs"\nRW {sectors} {kind} "{extent}"\n'
    ).encode()


def disk(capacity: int = CAP, name: str = "vm.vmdk") -> VirtualDisk:
    return VirtualDisk(
        key=2000, label="Hard disk 1", capacity=capacity, file_name=f"[ds1] vm/{name}",
        datastore="ds1", thin=True, disk_mode="persistent", change_id=None,
        controller_key=1000, unit_number=0,
    )


@pytest.fixture
def content() -> bytes:
    return os.urandom(CAP)


@pytest.fixture
def served(
    range_server: RangeServer, tls_cert: Cert, content: bytes
) -> tuple[FakeSession, RangeServer]:
    range_server.files["ds1/vm/vm.vmdk"] = descriptor(CAP // 512)
    range_server.files["ds1/vm/vm-flat.vmdk"] = content
    ctx = build_ssl_context(TLSOptions(thumbprint=tls_cert.thumbprint))
    return FakeSession(range_server.port, ctx), range_server


def test_https_reads_equal_direct_reads(
    served: tuple[FakeSession, RangeServer], content: bytes, tmp_path: Path
) -> None:
    session, server = served
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "vm.vmdk").write_bytes(descriptor(CAP // 512))
    (tmp_path / "vm" / "vm-flat.vmdk").write_bytes(content)
    https = open_disk(session, disk(), "https", datacenter="DC0")  # type: ignore[arg-type]
    direct = open_disk(None, disk(), "direct", datastore_mounts={"ds1": str(tmp_path)})
    for reader in (https, direct):
        assert reader.size == CAP
        assert reader.read() == content
        reader.seek(CAP - 100)
        assert reader.read(1000) == content[-100:]
        assert reader.read(10) == b""
        reader.seek(12345)
        buf = bytearray(777)
        assert reader.readinto(buf) == 777 and bytes(buf) == content[12345 : 12345 + 777]
        extents = [(0, 5000), (1 << 20, (1 << 20) + 3), (CAP - 512, 512)]
        got = list(reader.read_extents(extents, block=1 << 20))
        assert [o for o, _ in got] == [0, 1 << 20, 2 << 20, CAP - 512]
        for off, data in got:
            assert data == content[off : off + len(data)]
    cookies = {h.get("Cookie") for _, _, h in server.requests}
    assert cookies == {'vmware_soap_session="s1"'}
    assert all("dcPath=DC0" in path and "dsName=ds1" in path for _, path, _ in server.requests)


def test_drops_short_reads_and_5xx_are_retried(
    served: tuple[FakeSession, RangeServer], content: bytes
) -> None:
    session, server = served
    client = HTTPClient(session, backoff=0.01, busy_retries=5)  # type: ignore[arg-type]
    reader = open_disk(session, disk(), "https", datacenter="DC0", client=client)  # type: ignore[arg-type]
    reader.seek(4096)
    server.drop_next, server.short_next, server.fail_next = 1, 1, 1
    assert reader.read(65536) == content[4096 : 4096 + 65536]
    server.fail_next = 50
    with pytest.raises(DatastoreIOError) as info:
        reader.read(10)
    assert info.value.is_transient


def test_503_honours_retry_after_apart_from_error_retries(
    served: tuple[FakeSession, RangeServer], content: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy server (503) is waited out for as long as it asks, more often than ``retries``."""
    session, server = served
    pauses: list[float] = []
    monkeypatch.setattr("vmkeep.vsphere.httpclient.time.sleep", pauses.append)
    client = HTTPClient(session, retries=1, backoff=0.01)  # type: ignore[arg-type]
    reader = open_disk(session, disk(), "https", datacenter="DC0", client=client)  # type: ignore[arg-type]
    server.fail_next, server.retry_after = 6, "7"
    assert reader.read(1000) == content[:1000]
    assert pauses == [7.0] * 6
    server.fail_next, server.retry_after = 1, "3600"
    assert reader.read(10) == content[1000:1010]
    assert pauses[-1] == 30.0  # capped


def test_a_200_to_a_range_request_is_refused_unread(
    served: tuple[FakeSession, RangeServer], content: bytes
) -> None:
    session, server = served
    reader = open_disk(session, disk(), "https", datacenter="DC0")  # type: ignore[arg-type]
    server.ignore_range = True
    with pytest.raises(RangeIgnored) as info:
        reader.read(4096)
    assert not info.value.is_transient
    assert str(len(content)) in info.value.get_message()


def test_expired_cookie_relogs_in(served: tuple[FakeSession, RangeServer], content: bytes) -> None:
    session, server = served
    reader = open_disk(session, disk(), "https", datacenter="DC0")  # type: ignore[arg-type]
    server.unauthorized_next = 1
    assert reader.read(100) == content[:100]
    assert session.relogins == 1
    assert server.requests[-1][2]["Cookie"] == 'vmware_soap_session="s2"'


def test_refusals(served: tuple[FakeSession, RangeServer], tmp_path: Path) -> None:
    session, server = served
    server.files["ds1/vm/evil.vmdk"] = descriptor(CAP // 512, "../other/x-flat.vmdk")
    with pytest.raises(UnsafeDescriptorError):
        open_disk(session, disk(name="evil.vmdk"), "https", datacenter="DC0")  # type: ignore[arg-type]
    server.files["ds1/vm/d.vmdk"] = descriptor(CAP // 512, "d-s001.vmdk", "SPARSE")  # hosted
    with pytest.raises(UnsupportedDisk):  # (ESX snapshot deltas: test_vsphere_deltas.py)
        open_disk(session, disk(name="d.vmdk"), "https", datacenter="DC0")  # type: ignore[arg-type]
    server.files["ds1/vm/big.vmdk"] = descriptor(CAP // 512 * 2)
    with pytest.raises(UnsafeDescriptorError, match="vSphere says"):
        open_disk(session, disk(name="big.vmdk"), "https", datacenter="DC0")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        open_disk(session, disk(name="missing.vmdk"), "https", datacenter="DC0")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedDisk, match="not mounted"):
        open_disk(None, disk(), "direct", datastore_mounts={})
    (tmp_path / "vm").symlink_to("/etc")
    with pytest.raises(UnsafeDescriptorError):
        open_disk(None, disk(), "direct", datastore_mounts={"ds1": str(tmp_path)})


def test_upload_into_flat_extent(served: tuple[FakeSession, RangeServer]) -> None:
    session, server = served
    data = os.urandom(CAP)
    client = HTTPClient(session)  # type: ignore[arg-type]
    written = upload_disk(
        session, "[ds1] vm/vm.vmdk", io.BytesIO(data), CAP, datacenter="DC0", client=client  # type: ignore[arg-type]
    )
    assert written == "[ds1] vm/vm-flat.vmdk"
    assert server.uploads["ds1/vm/vm-flat.vmdk"] == data
    server.fail_next = 1  # a failed PUT of a seekable body is retried from the start
    client.put(folder_url("DC0", "ds1", "vm/raw.img"), io.BytesIO(data[:1000]), 1000)
    assert server.uploads["ds1/vm/raw.img"] == data[:1000]


def test_raw_datastore_files(
    served: tuple[FakeSession, RangeServer], content: bytes, tmp_path: Path
) -> None:
    session, _ = served
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "vm-flat.vmdk").write_bytes(content)
    for reader in (
        open_datastore_file(session, "[ds1] vm/vm-flat.vmdk", datacenter="DC0"),  # type: ignore[arg-type]
        open_datastore_file(
            None, "[ds1] vm/vm-flat.vmdk", "direct", datastore_mounts={"ds1": str(tmp_path)}
        ),
    ):
        assert reader.size == CAP
        reader.seek(CAP - 10)
        assert reader.read() == content[-10:]
        reader.close()


def test_a_wrong_certificate_is_refused_at_once_and_connections_are_pooled(
    served: tuple[FakeSession, RangeServer], content: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib3 pools one endpoint's connections; a pin mismatch is a TLS error, never retried."""
    session, _ = served
    pauses: list[float] = []
    monkeypatch.setattr("vmkeep.vsphere.httpclient.time.sleep", pauses.append)
    client = HTTPClient(session)  # type: ignore[arg-type]
    url = folder_url("DC0", "ds1", "vm/vm-flat.vmdk")
    for offset in range(0, 8192, 1024):
        assert client.get_range(url, offset, 1024) == content[offset : offset + 1024]
    assert len(client._pools) == 1  # every read on the one pool of this endpoint
    wrong = build_ssl_context(TLSOptions(thumbprint="ab" * 32))
    with pytest.raises(TLSVerificationFailed) as info:
        client.get_range(url, 0, 10, context=wrong)
    assert "thumbprint" in info.value.get_message() and not info.value.is_transient
    assert pauses == []
    client.close()
