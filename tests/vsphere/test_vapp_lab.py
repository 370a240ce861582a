"""VMs in a vApp: no ``parent`` (vSphere sets ``parentVApp``), and vmkeep still finds their place.

vSphere leaves a vApp's VMs' ``parent`` unset and lists the vApp, not its VMs, in the VM
folder (Ansible's ``vmware_vm_info`` and others failed on exactly this).  The lab does so too
(``esxsim/vapp.go``; stock vcsim kept such a VM in the folder with ``parent`` set).  vmkeep walks
``parentVApp`` and the vApp's ``parentFolder``: the VM's datacenter, folder and vApp are known,
so its backup reads its disks (``/folder`` needs the datacenter) and records the vApp, and its
restore goes into the vApp's folder with a warning that it is outside the vApp.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmkeep.licensing.store as store
from tests.restore.restore_helpers import run_cli
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.lab import runner
from vmkeep.lab.pytest_plugin import EsxLab
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import datastore_lookup, inventory, vm_lookup
from vmkeep.vsphere.connection import Session, connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.tls import TLSOptions

pytestmark = pytest.mark.lab
DEV_KEYS = Path(__file__).resolve().parent.parent / "licensing" / "keys"
VAPP, VM = "app1", "appvm"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, esx_lab: EsxLab) -> Iterator[EsxLab]:
    """A lab of its own (after the shared one: it needs the binary) with vApp ``app1`` in the
    root VM folder holding VM ``appvm`` (one 8 MiB disk on datastore1, written)."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    state = tmp_path_factory.mktemp("vapp") / "lab"
    lab = EsxLab(runner.up(n_small=1, state=state))
    try:
        si = lab.connect()
        dc = next(e for e in si.content.rootFolder.childEntity
                  if isinstance(e, vim.Folder)).childEntity[0]
        cluster = next(c for c in dc.hostFolder.childEntity
                       if isinstance(c, vim.ClusterComputeResource))
        alloc = vim.ResourceAllocationInfo(limit=-1, reservation=0, expandableReservation=True,
                                           shares=vim.SharesInfo(level="normal"))
        app = cluster.resourcePool.CreateVApp(
            VAPP, vim.ResourceConfigSpec(cpuAllocation=alloc, memoryAllocation=alloc),
            vim.VAppConfigSpec(), dc.vmFolder)
        dev = vim.vm.device
        disk = dev.VirtualDisk(
            key=-200, controllerKey=-100, unitNumber=0, capacityInKB=8192,
            backing=dev.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent",
                                                        thinProvisioned=True,
                                                        fileName="[datastore1]"))
        spec = vim.vm.ConfigSpec(
            name=VM, guestId="otherLinux64Guest", memoryMB=128, numCPUs=1,
            files=vim.vm.FileInfo(vmPathName="[datastore1]"),
            deviceChange=[
                dev.VirtualDeviceSpec(operation="add", device=dev.ParaVirtualSCSIController(
                    key=-100, busNumber=0, sharedBus="noSharing")),
                dev.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)])
        WaitForTask(app.CreateChildVM_Task(spec, cluster.host[0]))
        lab.client.write(VM, percent=50, disk=0, seed=7)
        yield lab
    finally:
        runner.down(state)


@pytest.fixture(scope="module")
def session(lab: EsxLab) -> Iterator[Session]:
    s = connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile))
    try:
        yield s
    finally:
        s.close()


def test_the_lab_shows_a_vapps_vm_as_vsphere_does(lab: EsxLab) -> None:
    from pyVmomi import vim

    si = lab.connect()
    dc = next(e for e in si.content.rootFolder.childEntity
              if isinstance(e, vim.Folder)).childEntity[0]
    children = {c.name: c for c in dc.vmFolder.childEntity}
    assert VAPP in children and VM not in children
    app = children[VAPP]
    vm = app.vm[0]
    assert vm.name == VM and vm.parent is None and vm.parentVApp == app
    assert app.parentFolder == dc.vmFolder and isinstance(app.parent, vim.ResourcePool)


def test_vmkeep_places_a_vapps_vm(session: Session) -> None:
    vm = vm_lookup.resolve_vm(session, VM)
    assert (vm.datacenter, vm.folder, vm.vapp) == ("Region/DC1", "/DC1/vm", VAPP)
    assert datastore_lookup.datacenter_path(session, vm.ref) == "Region/DC1"
    assert [vm_lookup.folder_path(session, where)
            for _, where in vm_lookup.vms_called(session, VM)] == ["/DC1/vm/app1"]
    assert inventory.inventory_parent(session, vm.ref)._moId != vm.ref._moId


def test_a_vapps_vm_is_backed_up_and_restored_beside_its_vapp(
    lab: EsxLab, session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMKEEP_VC_USER", lab.user)
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", lab.password)
    monkeypatch.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (DEV_KEYS / "dev_public.pem").read_bytes())
    monkeypatch.setenv("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
    env = {"vcenter": lab.url, "cafile": lab.cafile}
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)

    summary = run_flow(backup_vm, False, repo=str(repo), vm=VM, quiesce=False, **env)

    point = Repository.open(str(repo)).load_point(summary["id"])
    assert point.meta["vapp"] == VAPP and point.meta["vm_config"]["vapp"] == VAPP
    assert point.meta["vm_config"]["folder"] == "/DC1/vm"
    written = lab.client.read_disk(VM)
    code, out, err = run_cli("restore", "vm", summary["id"][:12], "--name", "appvm-r",
                             "--vcenter", env["vcenter"], "--cafile", env["cafile"], "--json",
                             repo=repo)
    assert code == 0, err
    restored = json.loads(out)
    assert restored["folder"] == "/DC1/vm"
    assert ("the VM was in vApp app1: restored outside it, into the vApp's folder /DC1/vm (move "
            "it into the vApp in the vSphere Client if it belongs there)") in restored["warnings"]
    assert lab.client.read_disk("appvm-r") == written and written.count(0) < len(written)
