"""Datastore names are unique per datacenter only: a name means the one of the target's datacenter.

vSphere allows two datastores of one name in two datacenters (every datacenter's standalone
hosts bring a local ``datastore1``).  The lab here gives DC2 a host (``esx21.lab.local``) with
its own ``datastore2`` — NFS and nearly full — beside DC1's ``datastore2`` (VMFS, 80 % free),
listed once after DC1 and once before it (``dc2_first``): vCenter's inventory order is not
something a client may rely on.  Whatever the order:

- the checks before a restore (datastore type for the transport, mounted on the target host,
  free space) and before a snapshot (free space of the VM's datastores), and the datastore a
  latency watch reads, are DC1's for a DC1 host or VM and DC2's for DC2's host;
- a mover VM's datacenter is known (hot-add refuses a VM of another datacenter: its
  datastore names would mean the mover's datacenter's datastores);
- a name the target's datacenter lacks is :class:`NotFound` naming that datacenter, though
  another datacenter has it;
- a VM backup and a restore of it onto DC1's ``datastore2`` run (before: the restore was refused
  as "not mounted" when DC2 came first, and both the backup and the restore were refused for
  DC2's full datastore when it came last).
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
from vmkeep.vsphere import (
    datastore_latency,
    datastore_lookup,
    datastore_space,
    inventory,
    vmconfig,
)
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import NotEnoughSpace, NotFound
from vmkeep.vsphere.vm_lookup import resolve_vm

pytestmark = pytest.mark.lab
DC2_FREE = 1 << 20  # 1 MiB of 500 GiB: below every threshold
DC2_HOST = "esx21.lab.local"


@pytest.fixture(scope="module", params=[False, True], ids=["dc2-last", "dc2-first"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        esx_lab: EsxLab) -> Iterator[EsxLab]:
    """A lab of its own (after the shared one: it needs the binary) with DC2's ``datastore2``."""
    state = tmp_path_factory.mktemp("dc2") / "lab"
    info = runner.up(n_small=1, state=state, dc2_first=request.param, dc2_datastores=[
        {"name": "datastore2", "type": "NFS", "free": DC2_FREE}])
    try:
        yield EsxLab(info)
    finally:
        runner.down(state)


@pytest.fixture(scope="module")
def session(lab: EsxLab) -> Iterator[Session]:
    with lab_session(lab) as s:
        yield s


def _host(session: Session, name: str) -> Any:
    from pyVmomi import vim

    return vmconfig._find(session, vim.HostSystem, name)


def test_the_lab_has_a_datastore2_in_each_datacenter(session: Session) -> None:
    from pyVmomi import vim

    from vmkeep.vsphere.inventory import object_properties

    found = [(p["name"], p["summary.type"]) for _, p in object_properties(
        session, vim.Datastore, ["name", "summary.type"]) if p["name"] == "datastore2"]
    assert sorted(found) == [("datastore2", "NFS"), ("datastore2", "VMFS")]


def test_restore_checks_take_the_target_hosts_datacenter(session: Session) -> None:
    dc1, dc2 = _host(session, "esx02.lab.local"), _host(session, DC2_HOST)

    # DC1's host: its VMFS datastore2, mounted, with room
    assert vmconfig.datastore_type(session, "datastore2", dc1) == "VMFS"
    vmconfig.check_host_mounts(session, dc1, "datastore2")
    vmconfig.check_transport(session, "https", "datastore2", dc1)
    datastore_space.ensure_room(session, "datastore2", dc1, 1 << 30, "a restore", "")
    assert (datastore_space.read_space(session, dc1)["datastore2"].free_percent or 0) > 75

    # DC2's host: its own NFS datastore2, nearly full
    assert vmconfig.datastore_type(session, "datastore2", dc2) == "NFS"
    vmconfig.check_host_mounts(session, dc2, "datastore2")
    with pytest.raises(NotEnoughSpace, match="datastore2"):
        datastore_space.ensure_room(session, "datastore2", dc2, 1 << 30, "a restore", "")

    # a name only the other datacenter has is not found in this one
    with pytest.raises(NotFound) as missing:
        vmconfig.check_host_mounts(session, dc2, "datastore1")
    assert "datastore 'datastore1' in datacenter DC2 (it has: datastore2)" in str(missing.value)
    with pytest.raises(NotFound):
        vmconfig.check_transport(session, "nfc", "datastore3", dc2)


def test_the_snapshot_space_check_and_latency_watch_read_the_vms_datastores(
    session: Session,
) -> None:
    from pyVmomi import vim

    vm = resolve_vm(session, "small01")  # DC1, on datastore2
    assert vm.datastores == ("datastore2",)
    assert datastore_space.check(session, vm, warn_percent=10, skip_percent=5) == []
    dc1_ds = datastore_lookup.find_datastore(session, "datastore2", vm.ref)
    url = str(session.get(dc1_ds, "summary.url")).rstrip("/")
    assert datastore_latency.instances(session, ["datastore2"], vm.ref) == {
        "datastore2": url.rsplit("/", 1)[-1]}
    dc2_ds = datastore_lookup.find_datastore(session, "datastore2", _host(session, DC2_HOST))
    assert dc2_ds is not None and dc2_ds._moId != dc1_ds._moId
    assert isinstance(inventory.datacenter_of(session, dc2_ds), vim.Datacenter)
    # what a mover's datacenter is compared with (hot-add stays within it)
    assert inventory.datacenter_path(session, vm.ref) == vm.datacenter == "Region/DC1"
    assert inventory.datacenter_path(session, dc2_ds) == "DC2"


@pytest.fixture
def lab_env(lab: EsxLab, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return licensed_vcenter_env(monkeypatch, lab)


def test_a_vm_backup_and_its_restore_run_beside_the_other_datacenters_namesake(
    lab: EsxLab, lab_env: dict[str, Any], session: Session, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    summary = run_flow(backup_vm, False, repo=str(repo), vm="small01", quiesce=False, **lab_env)
    assert not [w for w in summary.get("warnings", []) if "datastore" in w], summary["warnings"]

    code, out, err = run_cli("restore", "vm", summary["id"][:12], "--name", "small01-dc",
                             "--vcenter", lab_env["vcenter"], "--cafile", lab_env["cafile"],
                             "--json", repo=repo)
    try:
        assert code == 0, err
        restored = json.loads(out)
        assert restored["host"] == "esx02.lab.local" and restored["datastore"] == "datastore2"
        vm = resolve_vm(session, "small01-dc")
        assert vm.datacenter == "Region/DC1" and vm.datastores == ("datastore2",)
    finally:
        from pyVim.task import WaitForTask

        ref = _vm_ref(lab.connect(), "small01-dc")
        if ref is not None:
            if ref.runtime.powerState == "poweredOn":
                WaitForTask(ref.PowerOffVM_Task())
            WaitForTask(ref.Destroy_Task())


def _vm_ref(si: Any, name: str) -> Any:
    from pyVmomi import vim

    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine],
                                                      True)
    try:
        return next((v for v in view.view if v.name == name), None)
    finally:
        view.DestroyView()


def test_a_restore_into_dc2_is_judged_on_dc2s_datastore(
    lab: EsxLab, lab_env: dict[str, Any], session: Session, tmp_path: Path
) -> None:
    """Restored to DC2's host, the point meets DC2's nearly full ``datastore2`` (before, when
    DC2 came first, DC1's free space was read and the VM went on)."""
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    summary = run_flow(backup_vm, False, repo=str(repo), vm="small01", quiesce=False, **lab_env)

    code, _, err = run_cli("restore", "vm", summary["id"][:12], "--name", "small01-dc2",
                           "--host", DC2_HOST, "--vcenter", lab_env["vcenter"],
                           "--cafile", lab_env["cafile"], "--json", repo=repo)

    assert code == 16 and "datastore2" in err and "0.0 GiB free" in err, err
    assert _vm_ref(lab.connect(), "small01-dc2") is None


def test_the_lab_refuses_vms_in_dc2(session: Session) -> None:
    """DC2's datastores serve no files in the lab: a VM there is refused, never written into
    DC1's directory of the datastore's name."""
    from pyVmomi import vim

    from vmkeep.vsphere.errors import TaskFailed
    from vmkeep.vsphere.waiter import wait_for_task

    host = _host(session, DC2_HOST)
    folder = session.get(inventory.datacenter_of(session, host), "vmFolder")
    pool = session.get(session.get(host, "parent"), "resourcePool")
    spec = vim.vm.ConfigSpec(name="in-dc2", guestId="otherLinux64Guest", memoryMB=128, numCPUs=1,
                             files=vim.vm.FileInfo(vmPathName="[datastore2]"))
    with pytest.raises(TaskFailed) as refused:
        wait_for_task(session, folder.CreateVM_Task(spec, pool, host))
    assert refused.value.fault_type == "NotSupported"
