"""Matching an import lease's device URLs to the new VM's disks (pure logic)."""

from __future__ import annotations

import pytest
from pyVmomi import vim

from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.nfc_import import ImportLease

URL = vim.HttpNfcLease.DeviceUrl


def _lease(urls: list) -> ImportLease:
    lease = ImportLease.__new__(ImportLease)  # no session, no keeper thread
    lease.info = vim.HttpNfcLease.Info(deviceUrl=urls)
    return lease


DISKS = [
    {"file_name": "[ds] vm/vm.vmdk", "controller": ("ParaVirtualSCSIController", 0),
     "unit_number": 0},
    {"file_name": "[ds] vm/vm_1.vmdk", "controller": ("ParaVirtualSCSIController", 1),
     "unit_number": 0},
]


def test_by_target_file_name_as_vcsim_and_esx_give_them():
    lease = _lease([
        URL(key="/vm-1/VirtualDisk:1", url="https://*/nfc/L/vm_1.vmdk", disk=True,
            targetId="vm_1.vmdk", importKey="k1", sslThumbprint=""),
        URL(key="/vm-1/VirtualDisk:0", url="https://*/nfc/L/vm.vmdk", disk=True,
            targetId="vm.vmdk", importKey="k0", sslThumbprint=""),
    ])
    assert lease.urls_for(DISKS) == ["https://*/nfc/L/vm.vmdk", "https://*/nfc/L/vm_1.vmdk"]


def test_by_controller_and_unit_in_the_import_key():
    lease = _lease([
        URL(key="a", url="https://*/nfc/L/disk-1.vmdk", disk=True,
            importKey="/vm/ParaVirtualSCSIController1:0", sslThumbprint=""),
        URL(key="b", url="https://*/nfc/L/disk-0.vmdk", disk=True,
            importKey="/vm/ParaVirtualSCSIController0:0", sslThumbprint=""),
    ])
    assert lease.urls_for(DISKS) == ["https://*/nfc/L/disk-0.vmdk", "https://*/nfc/L/disk-1.vmdk"]


def test_a_lease_with_the_wrong_number_of_disks_is_refused():
    lease = _lease([URL(key="a", url="u", disk=True, importKey="x", sslThumbprint="")])
    with pytest.raises(VSphereError, match="1 disk URLs for 2 disks"):
        lease.urls_for(DISKS)


def test_progress_covers_all_disks_of_the_import():
    lease = _lease([])
    lease.percent, lease.total, lease.done = 0, 400, 0
    lease.advance(100)
    assert lease.percent == 25
    lease.advance(300)
    assert lease.percent == 99  # 100 only once the lease is completed
