"""A VM with a virtual-mode raw device mapping (a SAN LUN the guest sees as a virtual disk):
vSphere snapshots and change-tracks it like a VMDK — the snapshot's delta files sit above the
mapping — but its base is a LUN behind a mapping file (a ``VMFSRDM`` extent), no flat file on
the datastore.  The lab stores it so; vmkeep reads it through the host (NFC) under
``--transport auto``, refuses ``--transport https`` before any snapshot, keeps CBT
incrementals, and a restored VM gets a VMDK holding the LUN's contents, with a warning.

VMs used: vrdm01 and its restored copy, created here and destroyed again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from tests.lab.lab_helpers import enable_cbt, find_vm, snapshot, vdisks, wait
from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_lab import destroy_vm
from tests.vmbackup.vmbackup_helpers import (
    create_lab_vm,
    flat_disk_files,
    restored_hash,
    sha,
    vmkeep_snapshots,
)
from vmkeep.flows.restore_vm import restore_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository
from vmkeep.vsphere.transport_choice import VIRTUAL_RDM

pytestmark = pytest.mark.lab
VM, COPY = "vrdm01", "vrdm01-restored"
MIB = 1 << 20
RDM = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo


@pytest.fixture
def vrdm01(lab: Any) -> Iterator[tuple[Any, bytes]]:
    """vrdm01 on datastore1, powered off: Hard disk 1 a 4 MiB VMDK, Hard disk 2 a virtual-mode
    RDM of a 4 MiB "LUN" (the mapping file's data) whose first MiB is random; returns the
    LUN's contents."""
    lun = os.urandom(MIB) + bytes(3 * MIB)
    dev = vim.vm.device
    disk = dev.VirtualDisk(key=2000, unitNumber=0, controllerKey=1000, capacityInBytes=4 * MIB,
                           backing=dev.VirtualDisk.FlatVer2BackingInfo(
                               fileName=flat_disk_files(lab, VM, VM, b"\x11" * (4 * MIB)),
                               diskMode="persistent", thinProvisioned=True))
    rdm = dev.VirtualDisk(key=2001, unitNumber=1, controllerKey=1000, capacityInBytes=len(lun),
                          backing=RDM(fileName=flat_disk_files(lab, VM, "lun", lun),
                                      compatibilityMode="virtualMode", diskMode="persistent",
                                      deviceName="vml.0200000000600a098038303053453f46304572"))
    vm = create_lab_vm(lab, VM, [disk, rdm])
    try:
        yield vm, lun
    finally:
        destroy_vm(lab, COPY)
        destroy_vm(lab, VM)


def test_the_lab_stores_a_virtual_rdm_as_a_mapping_and_snapshots_it(
    lab: Any, vrdm01: tuple[Any, bytes]
) -> None:
    vm, lun = vrdm01
    folder = lab.datastore_dir("datastore1") / VM
    descriptor = (folder / "lun.vmdk").read_text()
    assert 'createType="vmfsRawDeviceMap"' in descriptor
    assert f'RW {len(lun) // 512} VMFSRDM "lun-rdm.vmdk"' in descriptor
    assert not (folder / "lun-flat.vmdk").exists()  # no flat file: the base is the LUN
    base = vdisks(vm.config)[1].backing
    assert isinstance(base, RDM) and base.compatibilityMode == "virtualMode"
    assert base.deviceName.startswith("vml.") and base.parent is None

    enable_cbt(vm)
    snap = snapshot(vm, "vrdm")
    try:
        top = vdisks(vm.config)[1].backing
        assert isinstance(top, RDM) and top.compatibilityMode == "virtualMode"
        assert top.fileName != f"[datastore1] {VM}/lun.vmdk" and top.deltaDiskFormat
        assert top.parent.fileName == f"[datastore1] {VM}/lun.vmdk" and top.changeId
        held = vdisks(snap.config)[1].backing
        assert isinstance(held, RDM) and held.fileName == f"[datastore1] {VM}/lun.vmdk"
        lab.write(VM, disk=1, at=(0, 4096), seed=5)  # into the delta, not the LUN
        assert lab.read_disk(VM, 1, snapshot="vrdm") == lun
    finally:
        wait(snap.RemoveSnapshot_Task(False))
    assert lab.read_disk(VM, 1)[4096:] == lun[4096:]  # consolidated into the LUN


def _connection(vc_env: dict[str, Any]) -> tuple[str, ...]:
    return ("--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"])


def _backup(vc_env: dict[str, Any], repo: str, *options: str) -> dict[str, Any]:
    """``vmkeep backup vm vrdm01 … --json``, which must succeed: its summary."""
    code, out, err = run_cli("backup", "vm", VM, *_connection(vc_env), *options, "--json",
                             repo=repo)
    assert code == 0, err
    summary: dict[str, Any] = json.loads(out)
    return summary


def test_a_virtual_rdm_is_read_through_the_host_incrementally_and_restored_as_a_vmdk(
    lab: Any, vrdm01: tuple[Any, bytes], vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    _vm, lun = vrdm01
    first = _backup(vc_env, repo)
    by_key = {d["key"]: d for d in first["disks"]}
    assert by_key[2000]["transport"] == "https" and by_key[2001]["transport"] == "nfc"
    assert not any("NFC instead" in w for w in first["warnings"])  # chosen, not a fallback
    point = Repository.open(repo).load_point(first["id"])
    assert point.disks[1].extra["transport"] == {"version": 1, "name": "nfc",
                                                 "reason": VIRTUAL_RDM}
    assert restored_hash(repo, first["id"], 1, tmp_path) == sha(lun)

    lab.write(VM, disk=1, at=(2 * MIB, 64 * 1024), seed=9)
    second = _backup(vc_env, repo)
    rdm = next(d for d in second["disks"] if d["key"] == 2001)
    assert rdm["mode"] == "cbt" and rdm["bytes_read"] < len(lun) // 4, rdm
    now = lab.read_disk(VM, 1)
    assert now != lun
    assert restored_hash(repo, second["id"], 1, tmp_path) == sha(now)
    assert vmkeep_snapshots(lab) == []

    restored = run_flow(restore_vm, False, repo=repo, point=second["id"], name=COPY, **vc_env)
    assert any("disk 2001 was a virtual-mode RDM" in w and "restored as a VMDK" in w
               for w in restored["warnings"]), restored["warnings"]
    disks = vdisks(find_vm(lab.connect(), COPY).config)
    assert len(disks) == 2 and isinstance(disks[1].backing,
                                          vim.vm.device.VirtualDisk.FlatVer2BackingInfo)
    assert lab.read_disk(COPY, 1) == now


def test_a_mover_vm_hot_adds_a_virtual_rdm(
    lab: Any, vrdm01: tuple[Any, bytes], vc_env: dict[str, Any], repo: str,
    mover: dict[str, Any], tmp_path: Path,
) -> None:
    _vm, lun = vrdm01
    summary = _backup(vc_env, repo)
    assert [d["transport"] for d in summary["disks"]] == ["hotadd", "hotadd"]
    assert restored_hash(repo, summary["id"], 1, tmp_path) == sha(lun)
    assert vmkeep_snapshots(lab) == []


def test_https_is_refused_for_a_virtual_rdm_before_any_snapshot(
    lab: Any, vrdm01: tuple[Any, bytes], vc_env: dict[str, Any], repo: str
) -> None:
    vc = _connection(vc_env)
    code, out, err = run_cli("backup", "vm", VM, *vc, "--transport", "https", repo=repo)
    line = " ".join(err.split())
    assert code == 16 and "Traceback" not in err, err
    assert f"VM {VM} not backed up: Hard disk 2 (scsi0:1, key 2001) is a virtual-mode RDM" in line
    assert "--transport auto, nfc or hotadd" in line
    assert out == "" and vmkeep_snapshots(lab) == []

    # left out by the job, the VMDK beside it is read over https as any disk
    excluded = _backup(vc_env, repo, "--transport", "https", "--exclude-disk", f"{VM}/scsi0:1")
    assert [d["key"] for d in excluded["disks"]] == [2000]

    code, out, err = run_cli("doctor", *vc, "--json")
    vms = {v["name"]: v for v in json.loads(out)["vms"]}
    assert "nfc" in vms[VM]["transports"], vms[VM]
    assert any("virtual-mode RDM(s) Hard disk 2" in f["reason"] for f in vms[VM]["findings"])


def test_the_lab_keeps_mapping_files_on_vmfs_only(lab: Any) -> None:
    """vSphere keeps an RDM's mapping file on a VMFS datastore; NFS (vSAN, vVol) holds none."""
    dev = vim.vm.device
    rdm = dev.VirtualDisk(key=2000, unitNumber=0, controllerKey=1000, capacityInBytes=MIB,
                          backing=RDM(fileName="[nfs01] vrdm02/lun.vmdk",
                                      compatibilityMode="virtualMode", diskMode="persistent",
                                      deviceName="vml.0200000000600a098038303053453f46304573"))
    try:
        with pytest.raises(vim.fault.InvalidDeviceBacking) as refused:
            create_lab_vm(lab, "vrdm02", [rdm])
        assert "Incompatible device backing specified for device '1'" in refused.value.msg
        with pytest.raises(LookupError):
            find_vm(lab.connect(), "vrdm02")
    finally:
        destroy_vm(lab, "vrdm02")


def test_a_vmdk_made_where_a_mapping_was_is_a_vmdk(lab: Any, vrdm01: tuple[Any, bytes]) -> None:
    """The lab remembers a mapping only for the disk it was asked for: once the VM and its files
    are gone, a VMDK created at the same path is a VMDK."""
    destroy_vm(lab, VM)
    dev = vim.vm.device
    disk = dev.VirtualDisk(key=2000, unitNumber=0, controllerKey=1000, capacityInBytes=MIB,
                           backing=dev.VirtualDisk.FlatVer2BackingInfo(
                               fileName=flat_disk_files(lab, VM, "lun", bytes(MIB)),
                               diskMode="persistent", thinProvisioned=True))
    vm = create_lab_vm(lab, VM, [disk])
    backing = vdisks(vm.config)[0].backing
    assert isinstance(backing, dev.VirtualDisk.FlatVer2BackingInfo), backing
    assert (lab.datastore_dir("datastore1") / VM / "lun-flat.vmdk").exists()
