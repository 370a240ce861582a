"""Instant disk recovery against the ESX lab: the disk of a restore point attached to an existing,
running VM straight from an NFS export of the repository (``instant-restore disk``); the guest's
writes land in the export's overlay, never in the repository; finalize moves that disk alone to
production storage (RelocateVM with a disk locator) and removes the export, the VM keeps running
and keeps the writes; cancel detaches the disk and removes the export, the VM stays; the lab,
as vSphere, refuses to remove a datastore that still holds an attached disk."""

# ruff: noqa: F811 - the instant-restore fixtures (lab_env, vm_point, …) are imported from its
# test module and taken as parameters by name, as pytest does

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab_helpers import host_get
from tests.restore.restore_helpers import run_cli
from tests.restore.test_instant_restore import (  # noqa: F401 - fixtures
    SOURCE_VM,
    cli,
    destroy,
    find,
    lab_env,
    leftovers,
    stop_exports,
    tree_hash,
    vcenter_args,
    vm_point,
)

pytestmark = pytest.mark.lab
TARGET = f"{SOURCE_VM}-idr-target"


def _disks(vm: Any) -> list[Any]:
    from pyVmomi import vim

    return [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]


@pytest.fixture
def target(esx_lab: Any, lab_env: dict[str, Any], vm_point: dict[str, Any]) -> Iterator[str]:
    """A running VM (a restored copy of the source) to attach disks to; destroyed afterwards."""
    from pyVim.connect import Disconnect

    cli("restore", "vm", vm_point["id"][:12], "--name", TARGET, *vcenter_args(lab_env),
        "--power-on", repo=vm_point["repo"])
    yield TARGET
    si = esx_lab.connect()
    try:
        destroy(si, TARGET)
    finally:
        Disconnect(si)


def _attach(lab_env: dict[str, Any], vm_point: dict[str, Any], *more: str) -> dict[str, Any]:
    return cli("instant-restore", "disk", vm_point["id"][:12], "--vm", TARGET,
               *vcenter_args(lab_env), "--nfs-port", "0", *more, repo=vm_point["repo"])


def test_a_disk_attached_from_the_export_is_finalized_to_production(
    esx_lab: Any, lab_env: dict[str, Any], vm_point: dict[str, Any], target: str
) -> None:
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    repo_before = tree_hash(vm_point["repo"])
    run = _attach(lab_env, vm_point, "--disk", "0")
    assert run["state"] == "running" and run["kind"] == "disks"
    [attached] = run["disks"]
    assert attached["index"] == 0 and attached["unit_number"] not in (None, 7)
    assert attached["node"] == f"scsi0:{attached['unit_number']}"
    nas, host = run["datastore"], run["host"]
    si = esx_lab.connect()
    try:
        vm = find(si, vim.VirtualMachine, TARGET)
        assert vm.runtime.powerState == "poweredOn"
        disks = _disks(vm)
        assert len(disks) == 2  # its own and the recovered one
        new = next(d for d in disks if d.key == attached["key"])
        assert new.backing.fileName == f"[{nas}] {TARGET}-disks/disk0.vmdk"
        assert {ds.name for ds in vm.datastore} >= {nas}
        flat = f"[{nas}] {TARGET}-disks/disk0-flat.vmdk"
        assert hashlib.sha256(host_get(esx_lab, si, host, flat)).digest() == hashlib.sha256(
            vm_point["disk0"]).digest()
        # vSphere refuses to remove a datastore holding a disk of a VM: the lab too
        dss = find(si, vim.HostSystem, host).configManager.datastoreSystem
        with pytest.raises(vim.fault.ResourceInUse):
            dss.RemoveDatastore(find(si, vim.Datastore, nas))
        # the guest writes to the recovered disk: the overlay takes it, the repository does not
        index = [d.key for d in disks].index(attached["key"])
        at = (1 << 20, 64 * 1024)
        esx_lab.write(TARGET, at=at, disk=index, seed=23)
        written = esx_lab.read_disk(TARGET, index)
        assert written[at[0]:at[0] + at[1]] != vm_point["disk0"][at[0]:at[0] + at[1]]
        assert tree_hash(vm_point["repo"], locks=False) == {
            k: v for k, v in repo_before.items() if not k.startswith("locks")}
        # a datastore the VM's host does not mount: refused up front, the run stays as it was
        assert host != "esx03.lab.local"
        code, _out, err = run_cli("instant-restore", "finalize", run["id"], "--datastore",
                                  "esx03-local", *vcenter_args(lab_env))
        assert code == 16 and f"esx03-local is not mounted on host {host}, which runs VM " \
            f"{TARGET}" in err and "Traceback" not in err, err
        still = next(d for d in _disks(find(si, vim.VirtualMachine, TARGET))
                     if d.key == attached["key"])
        assert still.backing.fileName == f"[{nas}] {TARGET}-disks/disk0.vmdk"
        production = esx_lab.vm(SOURCE_VM)["datastore"]
        done = cli("instant-restore", "finalize", run["id"], "--datastore", production,
                   *vcenter_args(lab_env))
        assert done["state"] == "finalized" and done["finalized_to"] == production
        vm = find(si, vim.VirtualMachine, TARGET)
        assert vm.runtime.powerState == "poweredOn"
        moved = next(d for d in _disks(vm) if d.key == attached["key"])
        assert moved.backing.fileName.startswith(f"[{production}] ")
        assert done["disks"][0]["file_name"] == moved.backing.fileName
        assert esx_lab.read_disk(TARGET, index) == written  # the guest's writes came along
        assert vm.config.files.vmPathName.startswith(f"[{production}] ")  # the rest stayed
        assert find(si, vim.Datastore, nas) is None
        assert nas not in {ds.name for ds in vm.datastore}
        run_dir = Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / run["id"]
        assert leftovers(run_dir) == []
        assert tree_hash(vm_point["repo"]) == repo_before
    finally:
        Disconnect(si)


def test_a_cancelled_disk_recovery_detaches_the_disk_and_keeps_the_vm(
    esx_lab: Any, lab_env: dict[str, Any], vm_point: dict[str, Any], target: str
) -> None:
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    code, _out, err = run_cli("instant-restore", "disk", vm_point["id"][:12], "--vm", TARGET,
                              *vcenter_args(lab_env), "--nfs-port", "0", repo=vm_point["repo"])
    assert code == 0 and " of VM " + TARGET in err and "disk 0 at scsi0:" in err, err  # all disks
    run = next(r for r in cli("instant-restore", "list")["runs"] if r["id"] in err)
    run_dir = Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / run["id"]
    assert leftovers(run_dir)
    listed = {r["id"]: r for r in cli("instant-restore", "list")["runs"]}
    assert listed[run["id"]]["kind"] == "disks" and listed[run["id"]]["export_alive"]
    done = cli("instant-restore", "cancel", run["id"], *vcenter_args(lab_env))
    assert done["state"] == "cancelled"
    si = esx_lab.connect()
    try:
        vm = find(si, vim.VirtualMachine, TARGET)
        assert vm is not None and vm.runtime.powerState == "poweredOn"
        assert [d.key for d in _disks(vm)] != [] and all(
            not d.backing.fileName.startswith(f"[{run['datastore']}]") for d in _disks(vm))
        assert len(_disks(vm)) == 1
        assert find(si, vim.Datastore, run["datastore"]) is None
    finally:
        Disconnect(si)
    assert leftovers(run_dir) == []


def test_a_disk_the_point_does_not_have_or_a_missing_vm_is_refused_before_any_export(
    esx_lab: Any, lab_env: dict[str, Any], vm_point: dict[str, Any], target: str
) -> None:
    code, _out, err = run_cli("instant-restore", "disk", vm_point["id"][:12], "--vm", TARGET,
                              "--disk", "scsi0:9", *vcenter_args(lab_env), "--nfs-port", "0",
                              repo=vm_point["repo"])
    assert code != 0 and "has no disk 'scsi0:9'" in err and "its disks: 0" in err
    code, _out, err = run_cli("instant-restore", "disk", vm_point["id"][:12], "--vm",
                              "no-such-vm", *vcenter_args(lab_env), "--nfs-port", "0",
                              repo=vm_point["repo"])
    assert code != 0 and "no-such-vm" in err
    assert [r for r in cli("instant-restore", "list")["runs"] if r.get("kind") == "disks"
            and r["state"] not in ("finalized", "cancelled")] == []


def test_a_failed_attach_detaches_removes_and_stops_what_it_made(
    esx_lab: Any, lab_env: dict[str, Any], vm_point: dict[str, Any], target: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    from vmkeep.vsphere import disk_attach
    from vmkeep.vsphere.errors import VSphereError

    real = disk_attach.attach_disk

    def attach_then_fail(*args: Any, **kw: Any) -> dict[str, Any]:
        real(*args, **kw)  # the disk is on the VM: the datastore cannot go before it does
        raise VSphereError("the session dropped after the attach")

    monkeypatch.setattr(disk_attach, "attach_disk", attach_then_fail)
    code, _out, err = run_cli("instant-restore", "disk", vm_point["id"][:12], "--vm", TARGET,
                              *vcenter_args(lab_env), "--nfs-port", "0", repo=vm_point["repo"])
    assert code == 16 and "the session dropped after the attach" in err
    [run] = [r for r in cli("instant-restore", "list")["runs"]
             if r.get("kind") == "disks" and r["state"] == "failed"]
    si = esx_lab.connect()
    try:
        vm = find(si, vim.VirtualMachine, TARGET)
        assert len(_disks(vm)) == 1 and vm.runtime.powerState == "poweredOn"
        assert find(si, vim.Datastore, run["datastore"]) is None
    finally:
        Disconnect(si)
    assert leftovers(Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / run["id"]) == []


def test_the_flow_attaches_and_cancels_under_prefect(
    esx_lab: Any, lab_env: dict[str, Any], vm_point: dict[str, Any], target: str,
    prefect_api: str,
) -> None:
    """The ``instant-restore`` flow with ``action: disk`` on a real Prefect server."""
    from vmkeep.flows.instant_restore import instant_restore
    from vmkeep.jobs.instant_restore import InstantRestoreSpec

    vc = {"vcenter": lab_env["vcenter"], "cafile": lab_env["cafile"]}
    attached = instant_restore(InstantRestoreSpec(
        **vc, action="disk", repo=vm_point["repo"], point=vm_point["id"], vm=TARGET,
        disks=["0"], nfs_port=0,
    ))
    assert attached["state"] == "running" and [d["index"] for d in attached["disks"]] == [0]
    done = instant_restore(InstantRestoreSpec(**vc, action="cancel", run=attached["id"]))
    assert done["state"] == "cancelled"
    assert leftovers(Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / attached["id"]) == []
