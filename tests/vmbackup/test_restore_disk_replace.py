"""``restore disk --replace`` on the lab (Veeam's virtual disk restore to the original VM): the
restored disk takes the place of the VM's disk at the node it was backed up from, the replaced
file is kept, and a running VM, one with snapshots or one without a disk there is refused before
anything is created.  An account without VirtualMachine.Config.RemoveDisk (or, backing up,
VirtualMachine.State.CreateSnapshot) is refused by name, and nothing is left behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots, snapshot, wait
from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_lab import destroy_vm
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.restore_vm import restore_vm
from vmkeep.flows.run import run_flow
from vmkeep.lab.access import OPERATOR_USER
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
SOURCE = "hot01"  # 16 MiB ext4 + 8 MiB raw data (scsi0:1); nothing writes to it
COPY = "hot01-replace"


@pytest.fixture
def copy(lab: Any, vc_env: dict[str, Any], repo: str) -> Iterator[dict[str, Any]]:
    """A backup of hot01 and a powered-off copy of it restored from that point."""
    remove_all_snapshots(find_vm(lab.connect(), SOURCE))
    point = run_flow(backup_vm, False, repo=repo, vm=SOURCE, **vc_env)
    run_flow(restore_vm, False, repo=repo, point=point["id"], name=COPY, **vc_env)
    try:
        yield point
    finally:
        destroy_vm(lab, COPY)


def _restore(vc_env: dict[str, Any], repo: str, point: str, vm: str) -> tuple[int, str, str]:
    return run_cli("restore", "disk", point, "--disk", "1", "--vm", vm, "--replace", "--json",
                   "--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"], repo=repo)


def _disk_files(lab: Any, vm: str) -> dict[str, str]:
    devices = find_vm(lab.connect(), vm).config.hardware.device
    controllers = {d.key: d for d in devices if hasattr(d, "busNumber")}
    return {f"scsi{controllers[d.controllerKey].busNumber}:{d.unitNumber}": d.backing.fileName
            for d in devices if type(d).__name__.endswith("VirtualDisk")}


def test_the_restored_disk_takes_the_place_of_the_damaged_one(
    lab: Any, vc_env: dict[str, Any], repo: str, copy: dict[str, Any]
) -> None:
    good = lab.read_disk(SOURCE, 1)
    lab.client.write(COPY, disk=1, at=(0, 1 << 20), seed=5)  # the copy's data disk damaged
    assert lab.read_disk(COPY, 1) != good
    before = _disk_files(lab, COPY)
    code, out, err = _restore(vc_env, repo, copy["id"][:12], COPY)
    assert code == 0, err
    attached = json.loads(out)["attached"]
    after = _disk_files(lab, COPY)
    assert attached["replaced"] == before["scsi0:1"] != attached["file_name"]
    assert after == {"scsi0:0": before["scsi0:0"], "scsi0:1": attached["file_name"]}
    assert lab.read_disk(COPY, 1) == good


def test_a_running_vm_a_vm_with_snapshots_or_without_the_disk_is_refused(
    lab: Any, vc_env: dict[str, Any], repo: str, copy: dict[str, Any]
) -> None:
    point = copy["id"][:12]
    vm = find_vm(lab.connect(), COPY)
    taken = snapshot(vm, "admin snapshot")
    code, _out, err = _restore(vc_env, repo, point, COPY)
    assert code == 14 and f"VM {COPY} has snapshots; delete them first" in err, err
    wait(taken.RemoveSnapshot_Task(removeChildren=False))
    wait(vm.PowerOnVM_Task())
    try:
        code, _out, err = _restore(vc_env, repo, point, COPY)
        assert code == 14 and f"power VM {COPY} off first (it is poweredOn)" in err, err
    finally:
        wait(vm.PowerOffVM_Task())
    code, _out, err = _restore(vc_env, repo, point, "small06")  # one disk, at scsi0:0
    assert code == 14 and "VM small06 has no disk at scsi0:1 to replace" in err, err
    assert "Traceback" not in err
    assert not [v for v in lab.client.status()["vms"]
                if v["name"].startswith("vmkeep-restore-")]


def test_without_the_remove_disk_privilege_nothing_is_left_behind(
    lab: Any, vc_env: dict[str, Any], repo: str, copy: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lab checks VirtualMachine.Config.RemoveDisk as vCenter does; the refusal names it,
    and the restored disk, moved beside the VM, is deleted again with the helper VM."""
    operator = next(u for u in lab.info.users if u["name"] == OPERATOR_USER)
    monkeypatch.setenv("VMKEEP_VC_USER", operator["name"])
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", operator["password"])
    before = _disk_files(lab, COPY)
    code, _out, err = _restore(vc_env, repo, copy["id"][:12], COPY)
    assert code == 16, err
    assert "VirtualMachine.Config.RemoveDisk" in err and "Traceback" not in err
    assert _disk_files(lab, COPY) == before
    assert not [v for v in lab.client.status()["vms"]
                if v["name"].startswith("vmkeep-restore-")]
    assert not [f for f in _folder_files(lab, COPY) if "-vmkeep-" in f]


def test_a_backup_without_the_snapshot_privilege_names_it(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = next(u for u in lab.info.users if u["name"] == OPERATOR_USER)
    monkeypatch.setenv("VMKEEP_VC_USER", operator["name"])
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", operator["password"])
    code, _out, err = run_cli("backup", "vm", "small05", "--vcenter", vc_env["vcenter"],
                              "--cafile", vc_env["cafile"], repo=repo)
    assert code == 16, err
    assert "VirtualMachine.State.CreateSnapshot" in err and "Traceback" not in err
    assert Repository.open(repo).list_points() == []


def _folder_files(lab: Any, vm_name: str) -> list[str]:
    from pyVmomi import vim

    vm = find_vm(lab.connect(), vm_name)
    ds_path = vm.config.files.vmPathName.rsplit("/", 1)[0]
    datastore = vm.datastore[0]
    task = datastore.browser.SearchDatastore_Task(
        ds_path, vim.host.DatastoreBrowser.SearchSpec(matchPattern=["*"]))
    result = wait(task)
    return [f.path for f in result.file]
