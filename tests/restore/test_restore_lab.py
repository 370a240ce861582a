"""Restores against the ESX lab: files into a running guest (guest operations), and a whole VM
recreated on another host and datastore, then backed up again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmkeep.licensing.store as store
from tests.restore.restore_helpers import run_cli
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.restore_files import restore_files
from vmkeep.flows.restore_vm import restore_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
SOURCE_VM = "small06"  # kept clean for file tests (random lab writes hit small01-04)
DEV_KEYS = Path(__file__).resolve().parent.parent / "licensing" / "keys"


@pytest.fixture(scope="module")
def lab_env(esx_lab: Any) -> Iterator[dict[str, Any]]:
    """vCenter and guest credentials in the environment only (never parameters)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMKEEP_VC_USER", esx_lab.user)
        mp.setenv("VMKEEP_VC_PASSWORD", esx_lab.password)
        mp.setenv("VMKEEP_GUEST_USER", "root")
        mp.setenv("VMKEEP_GUEST_PASSWORD", "secret")
        mp.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (DEV_KEYS / "dev_public.pem").read_bytes())
        mp.setenv("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
        yield {"vcenter": esx_lab.url, "cafile": esx_lab.cafile}


@pytest.fixture(scope="module")
def vm_point(lab_env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    repo = tmp_path_factory.mktemp("lab-restore") / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    summary = run_flow(backup_vm, False, repo=str(repo), vm=SOURCE_VM, quiesce=False, **lab_env)
    return {"repo": str(repo), "id": summary["id"]}


def disk_hash(repo: str, point_id: str, tmp: Path, disk: int = 0) -> str:
    repository = Repository.open(repo)
    out = tmp / f"{point_id[:8]}-{disk}.raw"
    restore_disk(repository, repository.load_point(point_id), disk, str(out))
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_restore_files_into_a_running_guest(esx_lab, lab_env, vm_point):
    files = esx_lab.vm(SOURCE_VM)["files"]
    point = vm_point["id"][:12]
    code, out, err = run_cli(
        "restore",
        "files",
        f"{point}:p1/etc",
        f"{point}:p1/home/alice/notes.txt",
        "--to-guest",
        "linux01:/srv/vmkeep-restore",
        "--vcenter",
        lab_env["vcenter"],
        "--cafile",
        lab_env["cafile"],
        "--json",
        repo=vm_point["repo"],
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ok"] and summary["files"] == 5 and summary["vm"] == "linux01"
    assert [(w["path"], w["reason"]) for w in summary["skipped"]] == [
        ("/etc/notes-link", "symlink")
    ]
    restored = {
        "/etc/hostname": "/srv/vmkeep-restore/etc/hostname",
        "/etc/passwd": "/srv/vmkeep-restore/etc/passwd",
        "/home/alice/notes.txt": "/srv/vmkeep-restore/notes.txt",
    }
    for source, guest_path in restored.items():
        data = esx_lab.client.get_file("linux01", guest_path)
        assert hashlib.sha256(data).hexdigest() == files[source], guest_path
    assert esx_lab.password not in out + err
    # through the flow, replacing what is there
    again = run_flow(
        restore_files,
        False,
        repo=vm_point["repo"],
        point=vm_point["id"],
        paths=["p1/etc/hostname"],
        guest="linux01:/srv/vmkeep-restore",
        overwrite=True,
        **lab_env,
    )
    assert again["ok"] and again["files"] == 1 and again["chunks_fetched"] > 0


def test_restore_vm_to_another_host_and_datastore_then_back_it_up(
    esx_lab, lab_env, vm_point, tmp_path
):
    source = esx_lab.vm(SOURCE_VM)
    host = next(h["name"] for h in esx_lab.hosts if h["name"] != source["host"])
    datastore = next(d["name"] for d in esx_lab.datastores if d["name"] != source["datastore"])
    new_name = f"{SOURCE_VM}-restored"
    try:
        _restore_and_back_up(esx_lab, lab_env, vm_point, tmp_path, host, datastore, new_name)
    finally:
        destroy_vm(esx_lab, new_name)


def destroy_vm(esx_lab: Any, name: str) -> None:
    """Remove a VM this test created, so later lab tests see the inventory they expect."""
    from pyVim.connect import Disconnect
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    si = esx_lab.connect()
    try:
        view = si.content.viewManager.CreateContainerView(
            si.content.rootFolder, [vim.VirtualMachine], True
        )
        for vm in [v for v in view.view if v.name == name]:
            if vm.runtime.powerState == "poweredOn":
                WaitForTask(vm.PowerOffVM_Task())
            WaitForTask(vm.Destroy_Task())
        view.DestroyView()
    finally:
        Disconnect(si)


def _restore_and_back_up(
    esx_lab: Any,
    lab_env: dict[str, Any],
    vm_point: dict[str, Any],
    tmp_path: Path,
    host: str,
    datastore: str,
    new_name: str,
) -> None:
    code, out, err = run_cli(
        "restore",
        "vm",
        vm_point["id"][:12],
        "--name",
        new_name,
        "--host",
        host,
        "--datastore",
        datastore,
        "--vcenter",
        lab_env["vcenter"],
        "--cafile",
        lab_env["cafile"],
        "--json",
        repo=vm_point["repo"],
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["vm"] == new_name and summary["host"] == host
    assert summary["disks"] and summary["disks"][0]["file_name"].startswith(f"[{datastore}]")
    # never over an existing VM without --overwrite
    code, _, err = run_cli(
        "restore",
        "vm",
        vm_point["id"][:12],
        "--name",
        new_name,
        "--host",
        host,
        "--datastore",
        datastore,
        "--vcenter",
        lab_env["vcenter"],
        "--cafile",
        lab_env["cafile"],
        repo=vm_point["repo"],
    )
    assert code == 16 and "exists" in err.lower(), err
    # … and replaces it with --overwrite, powered on
    replaced = run_flow(
        restore_vm,
        False,
        repo=vm_point["repo"],
        point=vm_point["id"],
        name=new_name,
        host=host,
        datastore=datastore,
        overwrite=True,
        power_on_after=True,
        **lab_env,
    )
    assert replaced["power_state"] == "poweredOn" and len(replaced["disks"]) == 1
    # the restored VM backs up, and holds exactly the backed-up disk
    again = run_flow(backup_vm, False, repo=vm_point["repo"], vm=new_name, quiesce=False, **lab_env)
    assert again["vm"] == new_name and again["snapshot_removed"]
    assert disk_hash(vm_point["repo"], again["id"], tmp_path) == disk_hash(
        vm_point["repo"], vm_point["id"], tmp_path
    )


def test_restore_vm_direct_into_a_mounted_datastore(esx_lab, lab_env, vm_point, tmp_path):
    source = esx_lab.vm(SOURCE_VM)
    datastore = "nfs01"  # direct writes only into NFS datastores mounted here
    new_name = f"{SOURCE_VM}-direct"
    try:
        code, out, err = run_cli(
            "restore",
            "vm",
            vm_point["id"][:12],
            "--name",
            new_name,
            "--datastore",
            datastore,
            "--transport",
            "direct",
            "--datastore-mount",
            f"{datastore}={esx_lab.datastore_dir(datastore)}",
            "--vcenter",
            lab_env["vcenter"],
            "--cafile",
            lab_env["cafile"],
            "--json",
            repo=vm_point["repo"],
        )
        assert code == 0, err
        summary = json.loads(out)
        assert summary["host"] == source["host"] and summary["datastore"] == datastore
        flat = summary["disks"][0]["file_name"]
        assert flat.endswith("-flat.vmdk")
        restored = esx_lab.read_disk(new_name, 0)
        assert hashlib.sha256(restored).hexdigest() == disk_hash(
            vm_point["repo"], vm_point["id"], tmp_path
        )
    finally:
        destroy_vm(esx_lab, new_name)


def test_restore_into_a_windows_guest_and_from_a_file_point(esx_lab, lab_env, vm_point, tmp_path):
    files = esx_lab.vm(SOURCE_VM)["files"]
    out = run_flow(
        restore_files,
        False,
        repo=vm_point["repo"],
        point=vm_point["id"],
        paths=["p1/etc/hostname"],
        guest="win01:D:\\Restored",  # FAT: the lab makes no NTFS folders
        **lab_env,
    )
    assert out["ok"] and out["files"] == 1, out
    data = esx_lab.client.get_file("win01", "D:\\Restored\\hostname")
    assert hashlib.sha256(data).hexdigest() == files["/etc/hostname"]

    from vmkeep.flows.backup_files import backup_files

    src = tmp_path / "src"
    (src / "conf").mkdir(parents=True)
    (src / "conf" / "app.ini").write_text("[app]\nkey = value\n")
    run_flow(backup_files, False, repo=vm_point["repo"], source=str(src), name="appfiles")
    out = run_flow(
        restore_files,
        False,
        repo=vm_point["repo"],
        point="appfiles@latest",
        paths=["/conf"],
        guest="linux01:/srv/from-files",
        **lab_env,
    )
    assert out["ok"] and out["files"] == 1 and out["dirs"] == 1, out
    assert esx_lab.client.get_file("linux01", "/srv/from-files/conf/app.ini") == (
        b"[app]\nkey = value\n"
    )
