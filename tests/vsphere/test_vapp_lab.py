"""VMs in a vApp: no ``parent`` (vSphere sets ``parentVApp``), and vmkeep still finds their place.

vSphere leaves a vApp's VMs' ``parent`` unset and lists the vApp, not its VMs, in the VM
folder (Ansible's ``vmware_vm_info`` and others failed on exactly this).  The lab does so too
(``esxsim/vapp.go``; stock vcsim kept such a VM in the folder with ``parent`` set).  vmkeep walks
``parentVApp`` and the vApp's ``parentFolder``: the VM's datacenter, folder and vApp are known,
so its backup reads its disks (``/folder`` needs the datacenter) and records the vApp; its
restore goes back into the vApp (``CreateChildVM_Task`` / ``ImportVApp`` into the vApp, no
folder), or — on a host of another cluster, or when the vApp is gone — into the vApp's folder
with a warning; ``--resource-pool`` naming a vApp restores into it, and refuses a ``--folder``
beside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.restore.restore_helpers import run_cli
from tests.support.licence import licensed_vcenter_env
from tests.vmbackup.vmbackup_helpers import lab_session
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.lab import runner
from vmkeep.lab.pytest_plugin import EsxLab
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import inventory, vm_lookup
from vmkeep.vsphere.connection import Session

pytestmark = pytest.mark.lab
VAPP, VM = "app1", "appvm"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, esx_lab: EsxLab) -> Iterator[EsxLab]:
    """A lab of its own (after the shared one: it needs the binary) with vApp ``app1`` in the
    root VM folder holding VM ``appvm`` (one 8 MiB disk on datastore1, written)."""
    state = tmp_path_factory.mktemp("vapp") / "lab"
    lab = EsxLab(runner.up(n_small=1, state=state))
    try:
        _make_vapp(lab, VAPP, VM)
        lab.client.write(VM, percent=50, disk=0, seed=7)
        yield lab
    finally:
        runner.down(state)


def _make_vapp(lab: EsxLab, name: str, vm_name: str) -> Any:
    """vApp ``name`` in the root VM folder (cluster01's root pool) holding VM ``vm_name`` (one
    8 MiB thin disk on datastore1); returns the vApp."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    si = lab.connect()
    dc = next(e for e in si.content.rootFolder.childEntity
              if isinstance(e, vim.Folder)).childEntity[0]
    cluster = next(c for c in dc.hostFolder.childEntity
                   if isinstance(c, vim.ClusterComputeResource))
    alloc = vim.ResourceAllocationInfo(limit=-1, reservation=0, expandableReservation=True,
                                       shares=vim.SharesInfo(level="normal"))
    app = cluster.resourcePool.CreateVApp(
        name, vim.ResourceConfigSpec(cpuAllocation=alloc, memoryAllocation=alloc),
        vim.VAppConfigSpec(), dc.vmFolder)
    dev = vim.vm.device
    disk = dev.VirtualDisk(
        key=-200, controllerKey=-100, unitNumber=0, capacityInKB=8192,
        backing=dev.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent", thinProvisioned=True,
                                                    fileName="[datastore1]"))
    spec = vim.vm.ConfigSpec(
        name=vm_name, guestId="otherLinux64Guest", memoryMB=128, numCPUs=1,
        files=vim.vm.FileInfo(vmPathName="[datastore1]"),
        deviceChange=[
            dev.VirtualDeviceSpec(operation="add", device=dev.ParaVirtualSCSIController(
                key=-100, busNumber=0, sharedBus="noSharing")),
            dev.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)])
    WaitForTask(app.CreateChildVM_Task(spec, cluster.host[0]))
    return app


@pytest.fixture(scope="module")
def session(lab: EsxLab) -> Iterator[Session]:
    with lab_session(lab) as s:
        yield s


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
    assert inventory.datacenter_path(session, vm.ref) == "Region/DC1"
    assert [vm_lookup.folder_path(session, where)
            for _, where in vm_lookup.vms_called(session, VM)] == ["/DC1/vm/app1"]
    assert inventory.inventory_parent(session, vm.ref)._moId != vm.ref._moId


@pytest.fixture(scope="module")
def point(lab: EsxLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``appvm`` backed up: the repository, the point id and the disk's bytes."""
    with pytest.MonkeyPatch.context() as mp:
        env = licensed_vcenter_env(mp, lab)
        repo = tmp_path_factory.mktemp("vapp-repo") / "repo"
        Repository.init(str(repo), image_chunk_size=256 * 1024)
        summary = run_flow(backup_vm, False, repo=str(repo), vm=VM, quiesce=False, **env)
        yield {"repo": repo, "id": summary["id"], "disk": lab.client.read_disk(VM)}


def _restore(lab: EsxLab, point: dict[str, Any], name: str, *args: str) -> tuple[int, Any, str]:
    code, out, err = run_cli("restore", "vm", point["id"][:12], "--name", name, *args,
                             "--vcenter", lab.url, "--cafile", lab.cafile, "--json",
                             repo=point["repo"])
    return code, json.loads(out) if code == 0 else None, err


@pytest.fixture
def vc_env(lab: EsxLab, monkeypatch: pytest.MonkeyPatch) -> None:
    licensed_vcenter_env(monkeypatch, lab)


def _vm(lab: EsxLab, name: str) -> Any:
    from pyVmomi import vim

    si = lab.connect()
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder,
                                                      [vim.VirtualMachine], True)
    try:
        return next((v for v in view.view if v.name == name), None)
    finally:
        view.DestroyView()


def test_a_vapps_vm_is_backed_up_with_its_vapp(lab: EsxLab, point: dict[str, Any]) -> None:
    saved = Repository.open(str(point["repo"])).load_point(point["id"])
    assert saved.meta["vapp"] == VAPP and saved.meta["vm_config"]["vapp"] == VAPP
    assert saved.meta["vm_config"]["folder"] == "/DC1/vm"
    assert point["disk"].count(0) < len(point["disk"])


def test_it_is_restored_back_into_its_vapp(
    lab: EsxLab, point: dict[str, Any], vc_env: None
) -> None:
    code, summary, err = _restore(lab, point, "appvm-r")

    assert code == 0, err
    assert summary["folder"] == "/DC1/vm/app1" and not summary["warnings"]
    vm = _vm(lab, "appvm-r")
    assert vm.parent is None and vm.parentVApp.name == VAPP
    assert lab.client.read_disk("appvm-r") == point["disk"]
    # created by CreateChildVM_Task, then written over HTTPS, rather than imported through NFC
    code, summary, err = _restore(lab, point, "appvm-r2", "--transport", "https")
    assert code == 0, err
    assert summary["folder"] == "/DC1/vm/app1"
    assert _vm(lab, "appvm-r2").parentVApp.name == VAPP
    assert lab.client.read_disk("appvm-r2") == point["disk"]


def test_on_a_host_of_another_cluster_it_goes_beside_the_vapp(
    lab: EsxLab, point: dict[str, Any], vc_env: None
) -> None:
    code, summary, err = _restore(lab, point, "appvm-h3", "--host", "esx03.lab.local")

    assert code == 0, err
    assert summary["folder"] == "/DC1/vm"
    assert ("the VM was in vApp app1, which is in another cluster than host esx03.lab.local: "
            "restored outside it, into /DC1/vm (--resource-pool names a vApp to restore into)"
            ) in summary["warnings"]
    assert _vm(lab, "appvm-h3").parent.name == "vm"


def test_when_the_vapp_is_gone_it_goes_into_the_folder_with_a_warning(
    lab: EsxLab, vc_env: None, tmp_path: Path
) -> None:
    from pyVim.task import WaitForTask

    app = _make_vapp(lab, "app2", "gonevm")
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    summary = run_flow(backup_vm, False, repo=str(repo), vm="gonevm", quiesce=False,
                       vcenter=lab.url, cafile=lab.cafile)
    WaitForTask(app.vm[0].Destroy_Task())  # its VM, then the vApp (vcsim cannot do both)
    WaitForTask(app.Destroy_Task())

    code, restored, err = _restore(lab, {"id": summary["id"], "repo": repo}, "gonevm")

    assert code == 0, err
    assert restored["folder"] == "/DC1/vm"
    assert ("the VM was in vApp app2, which is not in /DC1/vm in the target datacenter: "
            "restored outside it, into /DC1/vm (--resource-pool names a vApp to restore into)"
            ) in restored["warnings"]


def test_resource_pool_naming_a_vapp_restores_into_it_and_refuses_a_folder(
    lab: EsxLab, point: dict[str, Any], vc_env: None
) -> None:
    code, _, err = _restore(lab, point, "appvm-f", "--resource-pool", VAPP, "--folder", "/DC1/vm")
    assert code == 14 and "app1 is a vApp, whose VMs are in no folder" in err, err
    assert _vm(lab, "appvm-f") is None

    code, summary, err = _restore(lab, point, "appvm-p", "--resource-pool", VAPP)
    assert code == 0, err
    assert summary["folder"] == "/DC1/vm/app1"
    assert _vm(lab, "appvm-p").parentVApp.name == VAPP
