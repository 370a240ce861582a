"""The lab's vSAN / vVol datastores and its NFC export leases, checked from outside: pyVmomi
for the API, ``urllib`` for the device URLs and qemu-img as an independent streamOptimized
reader (``qemu-img convert -f vmdk`` of the exported stream equals the lab's view of the
snapshot's disk)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from tests.lab.lab_helpers import (
    find_vm,
    flat_name,
    folder_get,
    host_context,
    snapshot,
    vdisks,
    vm_file_get,
    wait,
)

pytestmark = pytest.mark.lab


def _download(esx_lab: Any, si: Any, url: str) -> bytes:
    """A device URL's body: the strict lab serves leases on the VM's ESX host (its own port and
    certificate), as vCenter hands out ``https://<esx host>/nfc/…``."""
    port = urllib.parse.urlsplit(url).port
    host = next((h for h in esx_lab.hosts if h.get("port") == port), None)
    assert host is not None, f"{url} is not on an ESX host's endpoint"
    req = urllib.request.Request(url, headers={"Cookie": si._stub.cookie})
    with urllib.request.urlopen(req, context=host_context(esx_lab, host["name"]),
                                timeout=120) as resp:
        return resp.read()


@pytest.mark.parametrize(
    ("vm_name", "ds_type", "scheme"), [("vsan01", "vsan", "vsan://"), ("vvol01", "VVOL", "vvol://")]
)
def test_object_datastores_have_no_flat_files(
    esx_lab: Any, si: Any, vm_name: str, ds_type: str, scheme: str
) -> None:
    vm = find_vm(si, vm_name)
    [disk] = vdisks(vm.config)
    assert disk.backing.datastore.summary.type == ds_type
    # the running VM's host holds its descriptor open: read it there (vCenter answers 500)
    descriptor = vm_file_get(esx_lab, si, vm_name, disk.backing.fileName).decode()
    assert f'VMFS "{scheme}' in descriptor
    with pytest.raises(urllib.error.HTTPError) as err:
        folder_get(esx_lab, flat_name(disk.backing.fileName))
    assert err.value.code == 404
    snap = snapshot(vm, "lab-object-delta")
    try:
        [delta] = vdisks(vm.config)
        text = vm_file_get(esx_lab, si, vm_name, delta.backing.fileName).decode()
        kind = "VSANSPARSE" if ds_type == "vsan" else "VMFSSPARSE"
        assert f'{kind} "{scheme}' in text
        if ds_type == "vsan":
            assert 'createType="vsanSparse"' in text
    finally:
        wait(snap.RemoveSnapshot_Task(False))


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_export_snapshot_stream_is_a_valid_stream_optimized_vmdk(
    esx_lab: Any, si: Any, tmp_path: Path
) -> None:
    vm = find_vm(si, "vsan01")
    esx_lab.write("vsan01", 2, seed=91)
    snap = snapshot(vm, "lab-nfc-export")
    try:
        esx_lab.write("vsan01", 2, seed=92)  # after the snapshot: not in the export
        lease = snap.ExportSnapshot()
        assert lease.state == "ready" and lease.info.leaseTimeout > 0
        assert lease.info.entity == vm
        [url] = [u for u in lease.info.deviceUrl if u.disk]
        assert url.key.endswith("ParaVirtualSCSIController0:0")
        stream = _download(esx_lab, si, url.url)
        lease.HttpNfcLeaseProgress(100)
        lease.HttpNfcLeaseComplete()
        (tmp_path / "disk.vmdk").write_bytes(stream)
        subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw",
                        str(tmp_path / "disk.vmdk"), str(tmp_path / "disk.raw")], check=True)
        expected = esx_lab.read_disk("vsan01", 0, snapshot="lab-nfc-export")
        assert (tmp_path / "disk.raw").read_bytes() == expected
        assert len(stream) < len(expected) // 4  # compressed grains, zero grains left out
        info = subprocess.run(["qemu-img", "info", str(tmp_path / "disk.vmdk")], check=True,
                              capture_output=True, text=True).stdout
        assert "streamOptimized" in info
    finally:
        wait(snap.RemoveSnapshot_Task(False))


def test_lease_life_complete_abort_and_timeout(esx_lab: Any, si: Any) -> None:
    vm = find_vm(si, "vvol01")
    with pytest.raises(vim.fault.InvalidPowerState):
        vm.ExportVm()  # a running VM exports only through a snapshot
    template = find_vm(si, "tmpl-linux")
    lease = template.ExportVm()
    lease.HttpNfcLeaseAbort()
    assert lease.state == "error" and isinstance(lease.error, vmodl.fault.RequestCanceled)
    [url] = [u.url for u in lease.info.deviceUrl]
    with pytest.raises(urllib.error.HTTPError) as err:
        _download(esx_lab, si, url)  # an ended lease serves nothing
    assert err.value.code == 404

    # the idle timeout, as a fault after some bytes of the stream: the body is cut short and
    # the lease is in error with a Timedout fault; progress calls then fail
    lease = template.ExportVm()
    with esx_lab.fault("nfc_timeout", "tmpl-linux", bytes=70_000):
        [url] = [u.url for u in lease.info.deviceUrl]
        with pytest.raises(Exception):  # noqa: B017 - urllib's IncompleteRead or a reset
            _download(esx_lab, si, url)
    assert lease.state == "error" and isinstance(lease.error, vim.fault.Timedout)
    with pytest.raises(vim.fault.Timedout):
        lease.HttpNfcLeaseProgress(10)
    leases = [le for le in esx_lab.client.nfc_leases() if le["vm"] == "tmpl-linux"]
    assert [le["outcome"] for le in leases[-2:]] == ["aborted", "timeout"]


def test_idle_lease_times_out_without_progress(esx_lab: Any, si: Any) -> None:
    template = find_vm(si, "tmpl-linux")
    esx_lab.client.request("POST", "nfc/lease-timeout", {"seconds": 1})
    try:
        lease = template.ExportVm()
        assert lease.info.leaseTimeout == 1
    finally:
        esx_lab.client.request("POST", "nfc/lease-timeout", {"seconds": 300})
    deadline = time.monotonic() + 60  # generous: the lab's timer fires after 1 s
    while lease.state == "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lease.state == "error" and isinstance(lease.error, vim.fault.Timedout)
