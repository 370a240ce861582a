"""vmkeep's https transport and guest transfers on the strict lab (what a real vCenter does):
reads from the VM's host with service tickets at the datacenter's inventory path, vCenter
fallback with a warning, 503 waited out, Range-ignored refused unbuffered, running files never
read, guest transfers verified against the host's own certificate.

VMs used: linux01 (disk reads; guest files under /home/alice), small04 (a snapshot, removed
again).
"""

from __future__ import annotations

import io
import logging
import os
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from vmkeep.vsphere import guestops, hosts, inventory, snapshots, transports
from vmkeep.vsphere.connection import Session, connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import DiskBusy, FileLocked, GuestOperationFailed, RangeIgnored
from vmkeep.vsphere.httpclient import HTTPClient, folder_url
from vmkeep.vsphere.tls import TLSOptions

pytestmark = pytest.mark.lab
# ruff: noqa: SIM117  (the reader, then the expected error: clearer nested)


@pytest.fixture
def session(lab: Any) -> Iterator[Session]:
    s = connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile))
    yield s
    s.close()


@pytest.fixture
def faults(lab: Any) -> Iterator[Any]:
    yield lab.client
    lab.client.clear_faults()


def vm_named(session: Session, name: str) -> inventory.VMInfo:
    return next(v for v in inventory.list_vms(session) if v.name == name)


@pytest.fixture
def small04(session: Session) -> Iterator[tuple[inventory.VMInfo, Any]]:
    vm = vm_named(session, "small04")
    with snapshots.backup_snapshot(session, vm.ref, "strict-test", quiesce=False) as snap:
        yield vm, snap


def snapshot_disk(session: Session, snap: Any) -> Any:
    from vmkeep.vsphere import cbt

    return next(iter(cbt.snapshot_disks(session, snap.ref).values()))


def test_inventory_gives_the_datacenters_inventory_path(session: Session) -> None:
    vm = vm_named(session, "linux01")
    assert vm.datacenter == "Region/DC1"
    endpoint = hosts.host_endpoint(session, vm.host)
    assert endpoint is not None and endpoint.name == "esx01.lab.local"
    assert endpoint.address == "127.0.0.1" and endpoint.port != session.port
    assert endpoint.cert_pem and "BEGIN CERTIFICATE" in endpoint.cert_pem


def test_running_disk_reads_from_its_host_not_through_vcenter(lab: Any, session: Session) -> None:
    vm = vm_named(session, "linux01")
    disk = vm.disks[0]
    want = lab.read_disk("linux01", 0, offset=0, length=8 << 20)
    endpoint = hosts.host_endpoint(session, vm.host)
    with transports.open_disk(session, disk, "https", datacenter=vm.datacenter,
                              host=endpoint) as reader:
        got = b"".join(data for _, data in reader.read_extents([(0, 8 << 20)], block=1 << 20))
    assert got == want
    # through vCenter the same file meets hosts that are not the lock owner: typed, no retries
    ds, path = disk.file_name[1:].split("] ", 1)
    flat = folder_url(vm.datacenter or "", ds, path.replace(".vmdk", "-flat.vmdk"))
    client = HTTPClient(session)
    with pytest.raises(FileLocked):
        for i in range(16):
            client.get_range(flat, i * 65536, 4096)


def test_a_running_vms_current_disk_is_never_read(session: Session) -> None:
    vm = vm_named(session, "linux01")
    with pytest.raises(DiskBusy) as info:
        transports.open_disk(session, vm.disks[0], "https", datacenter=vm.datacenter,
                             busy_files=[d.file_name for d in vm.disks])
    assert info.value.exit_code == 16


def test_unreachable_host_falls_back_to_vcenter_with_a_warning(
    lab: Any, session: Session, faults: Any, small04: Any
) -> None:
    vm, snap = small04
    disk = snapshot_disk(session, snap)
    want = lab.read_disk("small04", 0, snapshot=snap.ref._moId)
    warnings: list[str] = []
    faults.add_fault("host_unreachable", target=vm.host, count=0)
    with transports.open_disk(session, disk, "https", datacenter=vm.datacenter,
                              host=hosts.host_endpoint(session, vm.host),
                              warnings=warnings) as reader:
        assert reader.read() == want  # the frozen base is readable through vCenter
    assert len(warnings) == 1 and vm.host in warnings[0] and "through vCenter" in warnings[0]


def test_503_from_a_busy_host_is_waited_out(
    lab: Any, session: Session, faults: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """vmkeep's own cap raised above the host's (4): the host answers 503 + Retry-After and
    every read still returns the right bytes."""
    vm = vm_named(session, "linux01")
    want = lab.read_disk("linux01", 0, offset=0, length=16 << 20)
    faults.add_fault("ds_slow", target="linux01-flat", count=0, delay=2.0)
    hosts.set_host_concurrency(12)
    caplog.set_level(logging.INFO, logger="vmkeep.vsphere.httpclient")
    try:
        with transports.open_disk(session, vm.disks[0], "https", datacenter=vm.datacenter,
                                  host=hosts.host_endpoint(session, vm.host),
                                  parallel=12) as reader:
            got = b"".join(d for _, d in reader.read_extents([(0, 16 << 20)], block=1 << 20))
    finally:
        hosts.set_host_concurrency(hosts.MAX_PER_HOST)
    assert got == want
    assert "HTTP 503" in caplog.text


def test_range_ignored_is_refused_without_buffering(
    lab: Any, session: Session, faults: Any
) -> None:
    vm = vm_named(session, "linux01")
    disk = vm.disks[0]  # 256 MiB
    faults.add_fault("ds_norange", target="linux01-flat", count=0)
    tracemalloc.start()
    try:
        with transports.open_disk(session, disk, "https", datacenter=vm.datacenter,
                                  host=hosts.host_endpoint(session, vm.host)) as reader:
            with pytest.raises(RangeIgnored) as info:
                reader.pread(4 << 20, 4 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak  # the 256 MiB body was never read
    assert "ignored the Range header" in info.value.get_message()
    assert str(disk.capacity) in info.value.get_message()


@pytest.mark.parametrize("tls", ["cafile", "thumbprint"])
def test_guest_transfers_are_verified_against_the_hosts_certificate(
    lab: Any, tls: str
) -> None:
    opts = (TLSOptions(cafile=lab.cafile) if tls == "cafile"
            else TLSOptions(thumbprint=lab.thumbprint))
    with connect(lab.url, Credentials(lab.user, lab.password), opts) as session:
        vm = vm_named(session, "linux01")
        guest = Credentials("root", "secret")
        data = os.urandom(100_000)
        guestops.upload_file(session, vm.ref, guest, f"/home/alice/strict-{tls}.bin",
                             io.BytesIO(data), len(data), overwrite=True)
        out = io.BytesIO()
        guestops.download_file(session, vm.ref, guest, f"/home/alice/strict-{tls}.bin", out)
        assert out.getvalue() == data


def test_guest_transfer_to_an_unreachable_host_names_the_host(
    lab: Any, session: Session, faults: Any
) -> None:
    vm = vm_named(session, "linux01")
    faults.add_fault("host_unreachable", target=vm.host, count=0)
    with pytest.raises(GuestOperationFailed) as info:
        guestops.upload_file(session, vm.ref, Credentials("root", "secret"), "/home/alice/x.bin",
                             io.BytesIO(b"x"), 1, overwrite=True)
    message = info.value.get_message()
    assert vm.host in message and "unreachable" in message and "443" in message


def test_guest_transfers_still_work_on_a_lenient_lab(tmp_path: Any) -> None:
    """``lab up --lenient`` serves transfers on vCenter's own URL: verified as vCenter."""
    from vmkeep.lab import runner

    state = tmp_path / "lenient"
    info = runner.up(n_small=1, state=state, lenient=True)
    try:
        with connect(info.url, Credentials(info.user, info.password),
                     TLSOptions(cafile=info.cafile)) as session:
            vm = vm_named(session, "linux01")
            guest = Credentials("root", "secret")
            guestops.upload_file(session, vm.ref, guest, "/home/alice/lenient.bin",
                                 io.BytesIO(b"lenient"), 7, overwrite=True)
            out = io.BytesIO()
            guestops.download_file(session, vm.ref, guest, "/home/alice/lenient.bin", out)
            assert out.getvalue() == b"lenient"
    finally:
        runner.down(state)
