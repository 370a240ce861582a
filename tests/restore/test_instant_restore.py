"""Instant VM recovery against the ESX lab: a VM restore point runs from an NFS export of the
repository (nfs-ganesha on loopback, mounted by the lab's user-space NFS client as a NAS
datastore), writes land in the overlay, finalize moves it to production storage and removes the
export; cancel removes everything."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmkeep.licensing.store as store
from tests.lab.lab_helpers import host_get
from tests.restore.restore_helpers import run_cli
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.repository import Repository

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        shutil.which("ganesha.nfsd") is None or shutil.which("nbdfuse") is None,
        reason="nfs-ganesha / nbdfuse not installed",
    ),
]
SOURCE_VM = "small06"
DEV_KEYS = Path(__file__).resolve().parent.parent / "licensing" / "keys"


@pytest.fixture(scope="module")
def lab_env(esx_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMKEEP_VC_USER", esx_lab.user)
        mp.setenv("VMKEEP_VC_PASSWORD", esx_lab.password)
        mp.setenv("VMKEEP_STATE_DIR", str(tmp_path_factory.mktemp("instant-state")))
        mp.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (DEV_KEYS / "dev_public.pem").read_bytes())
        mp.setenv("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
        yield {"vcenter": esx_lab.url, "cafile": esx_lab.cafile}


@pytest.fixture(autouse=True)
def stop_exports(lab_env: dict[str, Any]) -> Iterator[None]:
    """Whatever a failing test left serving is stopped."""
    yield
    from vmkeep.browse import instant_export, instant_runs

    for r in instant_runs.all_runs():
        if r.get("supervisor_pid") and r["state"] not in ("finalized", "cancelled"):
            instant_export.stop(instant_runs.run_path(r["id"]), int(r["supervisor_pid"]))


@pytest.fixture(scope="module")
def vm_point(lab_env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    repo = tmp_path_factory.mktemp("instant") / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    summary = run_flow(backup_vm, False, repo=str(repo), vm=SOURCE_VM, quiesce=False, **lab_env)
    repository = Repository.open(str(repo))
    out = tmp_path_factory.mktemp("instant-ref") / "disk0.raw"
    restore_disk(repository, repository.load_point(summary["id"]), 0, str(out))
    return {"repo": str(repo), "id": summary["id"], "disk0": out.read_bytes()}


def tree_hash(root: str, locks: bool = True) -> dict[str, str]:
    """Every repository file's hash (``locks=False``: without the lock files: a running export
    holds a shared lock, so that prune keeps what it serves)."""
    out = {}
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            if not locks and os.path.relpath(p, root).startswith("locks"):
                continue
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def cli(*args: str, repo: str | None = None) -> dict[str, Any]:
    code, out, err = run_cli(*args, "--json", repo=repo)
    assert code == 0, err
    return dict(json.loads(out))


def vcenter_args(lab_env: dict[str, Any]) -> list[str]:
    return ["--vcenter", lab_env["vcenter"], "--cafile", lab_env["cafile"]]


def find(si: Any, kind: Any, name: str) -> Any:
    """The object called ``name`` as the vSphere Client shows it (the API escapes ``/``)."""
    from vmkeep.vsphere.names import vm_name

    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [kind], True)
    try:
        return next((o for o in view.view if vm_name(o.name) == name), None)
    finally:
        view.DestroyView()


def destroy(si: Any, name: str) -> None:
    """Power off and destroy the lab VM called ``name``, if there is one (test clean-up)."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    vm = find(si, vim.VirtualMachine, name)
    if vm is not None:
        if vm.runtime.powerState == "poweredOn":
            WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.Destroy_Task())


def first_disk(vm: Any) -> Any:
    from pyVmomi import vim

    return next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))


def leftovers(run_dir: Path) -> list[str]:
    """Processes and mounts of this run still alive."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(run_dir) in cmd and state != "Z":
            found.append(cmd)
    found += [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
              if str(run_dir) in ln]
    return found


def start(
    lab_env: dict[str, Any], vm_point: dict[str, Any], host: str, name: str, *more: str
) -> dict[str, Any]:
    return cli("instant-restore", vm_point["id"][:12], *vcenter_args(lab_env), "--host", host,
               "--name", name, "--nfs-port", "0", *more, repo=vm_point["repo"])


def test_instant_restore_runs_from_the_export_and_finalize_moves_it(esx_lab, lab_env, vm_point):
    from pyVmomi import vim

    source = esx_lab.vm(SOURCE_VM)
    host = source["host"]
    name = f"{SOURCE_VM}-instant"
    repo_before = tree_hash(vm_point["repo"])
    run = start(lab_env, vm_point, host, name)
    assert run["state"] == "running" and run["powered_on_s"] > 0
    supervisor_env = Path(f"/proc/{run['supervisor_pid']}/environ").read_bytes()
    assert esx_lab.password.encode() not in supervisor_env
    nas = run["datastore"]
    si = esx_lab.connect()
    try:
        vm = find(si, vim.VirtualMachine, name)
        assert vm is not None and vm.runtime.powerState == "poweredOn"
        assert vm.config.files.vmPathName == f"[{nas}] {name}/{name}.vmx"
        disk = first_disk(vm)
        assert disk.backing.fileName == f"[{nas}] {name}/disk0.vmdk"
        ds = find(si, vim.Datastore, nas)
        assert ds.summary.type == "NFS41"
        assert ds.info.nas.remotePath == run["nfs"]["pseudo"]
        # the disk the lab serves from the NAS datastore (/folder on the host running the VM,
        # which holds the lock) is the restore point's disk
        flat = f"[{nas}] {name}/disk0-flat.vmdk"
        assert hashlib.sha256(host_get(esx_lab, si, host, flat)).digest() == hashlib.sha256(
            vm_point["disk0"]).digest()
        # a guest write lands in the export's overlay: visible on the datastore, not in the repo
        at = (1 << 20, 64 * 1024)
        esx_lab.write(name, at=at, seed=21)
        changed = host_get(esx_lab, si, host, flat, at[0], at[0] + at[1] - 1)
        assert changed != vm_point["disk0"][at[0]:at[0] + at[1]]
        assert tree_hash(vm_point["repo"], locks=False) == {
            k: v for k, v in repo_before.items() if not k.startswith("locks")}
        on_nas = esx_lab.read_disk(name, 0)
        assert on_nas[at[0]:at[0] + at[1]] == changed
        listed = cli("instant-restore", "list")["runs"]
        assert [(r["id"], r["state"], r["export_alive"]) for r in listed] == [
            (run["id"], "running", True)]
        # finalize: storage vMotion to production, then the export goes away
        target = source["datastore"]
        done = cli("instant-restore", "finalize", run["id"], "--datastore", target,
                   *vcenter_args(lab_env))
        assert done["state"] == "finalized" and done["finalized_to"] == target
        vm = find(si, vim.VirtualMachine, name)
        assert vm.runtime.powerState == "poweredOn"
        assert vm.config.files.vmPathName.startswith(f"[{target}] ")
        disk = first_disk(vm)
        assert disk.backing.fileName.startswith(f"[{target}] ")
        assert esx_lab.read_disk(name, 0) == on_nas
        moved = host_get(esx_lab, si, host, disk.backing.fileName[:-len(".vmdk")] + "-flat.vmdk")
        assert moved == on_nas
        assert find(si, vim.Datastore, nas) is None
        run_dir = Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / run["id"]
        assert leftovers(run_dir) == []
        assert tree_hash(vm_point["repo"]) == repo_before
        for f in run_dir.rglob("*"):  # no vSphere credential in anything the run wrote
            if f.is_file():
                assert esx_lab.password.encode() not in f.read_bytes(), f
    finally:
        try:
            destroy(si, name)
        finally:
            from pyVim.connect import Disconnect

            Disconnect(si)


def test_instant_restore_cancel_removes_everything(esx_lab, lab_env, vm_point):
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    from vmkeep.browse.instant import datastore_folder

    name = f"{SOURCE_VM} instant/../cancel"  # a VM name is no safe folder name
    folder = datastore_folder(name)
    assert folder == f"{SOURCE_VM}_instant_.._cancel"
    run = start(lab_env, vm_point, esx_lab.vm(SOURCE_VM)["host"], name)
    run_dir = Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / run["id"]
    assert leftovers(run_dir)  # the export serves
    si = esx_lab.connect()
    try:
        vmx = find(si, vim.VirtualMachine, name).config.files.vmPathName
        assert vmx == f"[{run['datastore']}] {folder}/{folder}.vmx"
    finally:
        Disconnect(si)
    done = cli("instant-restore", "cancel", run["id"][:7], *vcenter_args(lab_env))
    assert done["state"] == "cancelled"
    si = esx_lab.connect()
    try:
        assert find(si, vim.VirtualMachine, name) is None
        assert find(si, vim.Datastore, run["datastore"]) is None
    finally:
        Disconnect(si)
    assert leftovers(run_dir) == []
    again, _, err = run_cli("instant-restore", "cancel", run["id"], *vcenter_args(lab_env))
    assert again == 14 and "cancelled" in err


def test_instant_restore_refuses_an_existing_vm_name(esx_lab, lab_env, vm_point):
    code, _, err = run_cli("instant-restore", vm_point["id"][:12], *vcenter_args(lab_env),
                           "--host", esx_lab.vm(SOURCE_VM)["host"], "--name", SOURCE_VM,
                           "--nfs-port", "0", repo=vm_point["repo"])
    assert code == 16 and SOURCE_VM in err and "Traceback" not in err


def test_a_name_another_folder_holds_runs_in_its_own_folder_with_a_warning(
    esx_lab, lab_env, vm_point
):
    """VM names are unique per vSphere folder only: the source VM's own name is free in another
    folder, so the run goes there, saying which VM has the name."""
    from pyVim.connect import Disconnect
    from pyVim.task import WaitForTask

    from tests.lab.lab_helpers import lab_datacenter

    si = esx_lab.connect()
    sub = lab_datacenter(si).vmFolder.CreateFolder("instant-sub")
    try:
        run = start(lab_env, vm_point, esx_lab.vm(SOURCE_VM)["host"], SOURCE_VM,
                    "--folder", "instant-sub")
        try:
            assert run["state"] == "running"
            assert any(w.startswith(f"another VM named '{SOURCE_VM}' exists (in /DC1/vm")
                       and "unique per folder only" in w for w in run["warnings"]), run
            assert [vm.name for vm in sub.childEntity] == [SOURCE_VM]
        finally:
            cli("instant-restore", "cancel", run["id"][:7], *vcenter_args(lab_env))
    finally:
        WaitForTask(sub.Destroy_Task())
        Disconnect(si)


def test_a_failed_start_removes_what_it_made(esx_lab, lab_env, vm_point):
    """The host cannot reach the export (wrong --nfs-address): the mount fails, the export is
    stopped, no VM or datastore is left, and the run is recorded as failed."""
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    name = f"{SOURCE_VM}-instant-unreachable"
    code, _, err = run_cli("instant-restore", vm_point["id"][:12], *vcenter_args(lab_env),
                           "--host", esx_lab.vm(SOURCE_VM)["host"], "--name", name,
                           "--nfs-port", "0", "--nfs-address", "127.0.0.2",
                           "--listen", "127.0.0.1", repo=vm_point["repo"])
    assert code == 16 and "NFS mount" in err and "Traceback" not in err
    failed = [r for r in cli("instant-restore", "list")["runs"] if r["vm"] == name]
    assert [r["state"] for r in failed] == ["failed"]
    run_dir = Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / failed[0]["id"]
    assert leftovers(run_dir) == []
    si = esx_lab.connect()
    try:
        assert find(si, vim.VirtualMachine, name) is None
        assert find(si, vim.Datastore, failed[0]["datastore"]) is None
    finally:
        Disconnect(si)


def test_the_job_starts_and_cancels_a_run_in_process(esx_lab, lab_env, vm_point):
    """The job behind the ``instant-restore`` flow, with the in-process runtime."""
    from pydantic import ValidationError

    from vmkeep.jobs.instant_restore import InstantRestoreSpec, instant_restore
    from vmkeep.runtime.local import LocalRuntime

    target = {"vcenter": lab_env["vcenter"], "cafile": lab_env["cafile"]}
    with pytest.raises(ValidationError, match="finalize needs datastore"):
        InstantRestoreSpec(**target, action="finalize", run="ir-00000000")
    rt = LocalRuntime()
    started = instant_restore(InstantRestoreSpec(
        **target, repo=vm_point["repo"], point=vm_point["id"], host=esx_lab.vm(SOURCE_VM)["host"],
        name=f"{SOURCE_VM}-instant-job", nfs_port=0,
    ), rt)
    assert started["state"] == "running"
    done = instant_restore(InstantRestoreSpec(**target, action="cancel", run=started["id"]), rt)
    assert done["state"] == "cancelled"
    assert [key for key, _, _ in rt.reports] == [f"instant-restore-{started['id']}"] * 2
    assert leftovers(Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / started["id"]) == []


def test_an_efi_vm_runs_with_its_settings_and_nvram(esx_lab, lab_env, tmp_path):
    """Firmware, secure boot, extraConfig and the NVRAM file of the saved configuration reach the
    VM that runs from the export (the NFC restore test's EFI source VM); its adapters join the
    networks mapped with ``--network`` and, with ``--connect-networks``, connect."""
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    from tests.restore.test_restore_nfc_lab import NVRAM, make_source_vm

    source, name = "instefi01", "instefi01-instant"
    host = esx_lab.hosts[0]["name"]
    make_source_vm(esx_lab, source, host, "datastore1")
    si = esx_lab.connect()
    try:
        repo = tmp_path / "repo"
        Repository.init(str(repo), image_chunk_size=256 * 1024)
        point = run_flow(backup_vm, False, repo=str(repo), vm=source, quiesce=False, **lab_env)
        run = start(lab_env, {"repo": str(repo), "id": point["id"]}, host, name,
                    "--network", "VM Network=dvpg-prod", "--connect-networks")
        vm = find(si, vim.VirtualMachine, name)
        cards = [d for d in vm.config.hardware.device
                 if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        pg = next(n for n in vm.runtime.host.network if n.name == "dvpg-prod")
        assert [c.backing.port.portgroupKey for c in cards] == [pg.key, pg.key]
        assert all(c.connectable.startConnected for c in cards)
        assert vm.config.firmware == "efi" and vm.config.bootOptions.efiSecureBootEnabled
        extra = {o.key: o.value for o in vm.config.extraConfig}
        assert extra["disk.EnableUUID"] == "TRUE" and extra["app.role"] == "db"
        assert "sched.swap.derivedName" not in extra
        nvram = f"[{run['datastore']}] {name}/{name}.nvram"
        assert host_get(esx_lab, si, host, nvram) == NVRAM
        assert cli("instant-restore", "cancel", run["id"], *vcenter_args(lab_env))["state"] == (
            "cancelled")
    finally:
        for n in (name, source):
            destroy(si, n)
        Disconnect(si)


def test_a_start_killed_after_creating_the_vm_is_cancelled_cleanly(esx_lab, lab_env, vm_point,
                                                                   tmp_path):
    """kill -9 after CreateVM, before the VM is in the run record: ``cancel`` still finds that VM
    (by name, only on the run's own datastore), unregisters it and removes everything."""
    import signal
    import subprocess
    import time

    from pyVim.connect import Disconnect
    from pyVmomi import vim

    from tests.restore.restore_helpers import VMKEEP

    name = f"{SOURCE_VM}-instant-killed"
    marker = tmp_path / "parked"
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=vm_point["repo"],
               VMKEEP_TEST_CRASH_AT="instant-created:1", VMKEEP_TEST_CRASH_MARKER=str(marker))
    proc = subprocess.Popen(
        [*VMKEEP, "instant-restore", vm_point["id"][:12], *vcenter_args(lab_env), "--host",
         esx_lab.vm(SOURCE_VM)["host"], "--name", name, "--nfs-port", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300  # a hang guard, not a speed requirement
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    runs = [r for r in cli("instant-restore", "list")["runs"] if r["vm"] == name]
    assert [(r["state"], r["vm_moref"]) for r in runs] == [("starting", None)]
    done = cli("instant-restore", "cancel", runs[0]["id"], *vcenter_args(lab_env))
    assert done["state"] == "cancelled"
    si = esx_lab.connect()
    try:
        assert find(si, vim.VirtualMachine, name) is None
        assert find(si, vim.Datastore, runs[0]["datastore"]) is None
        assert find(si, vim.VirtualMachine, SOURCE_VM) is not None  # nothing else touched
    finally:
        Disconnect(si)
    assert leftovers(Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / runs[0]["id"]) == []


def test_every_disk_of_a_two_disk_vm_is_exported(esx_lab, lab_env, tmp_path):
    """linux01 (system disk + data disk): each VM disk points at its own exported descriptor and
    reads as that disk of the restore point."""
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    point = run_flow(backup_vm, False, repo=str(repo), vm="linux01", quiesce=False, **lab_env)
    host = esx_lab.vm("linux01")["host"]
    name = "linux01-instant"
    run = start(lab_env, {"repo": str(repo), "id": point["id"]}, host, name)
    repository = Repository.open(str(repo))
    si = esx_lab.connect()
    try:
        vm = find(si, vim.VirtualMachine, name)
        disks = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
        assert [d.backing.fileName for d in disks] == [
            f"[{run['datastore']}] {name}/disk{n}.vmdk" for n in range(2)]
        for n, disk in enumerate(disks):
            want = tmp_path / f"disk{n}.raw"
            restore_disk(repository, repository.load_point(point["id"]), n, str(want))
            flat = disk.backing.fileName[:-len(".vmdk")] + "-flat.vmdk"
            got = host_get(esx_lab, si, host, flat)
            assert hashlib.sha256(got).digest() == hashlib.sha256(want.read_bytes()).digest()
            assert disk.capacityInBytes == len(got)
    finally:
        Disconnect(si)
        cli("instant-restore", "cancel", run["id"], *vcenter_args(lab_env))


def test_the_flow_starts_and_cancels_under_prefect(esx_lab, lab_env, vm_point, prefect_api):
    """The ``instant-restore`` flow (a thin wrapper of the job) on a real Prefect server."""
    from vmkeep.flows.instant_restore import instant_restore
    from vmkeep.jobs.instant_restore import InstantRestoreSpec

    target = {"vcenter": lab_env["vcenter"], "cafile": lab_env["cafile"]}
    started = instant_restore(InstantRestoreSpec(
        **target, repo=vm_point["repo"], point=vm_point["id"], host=esx_lab.vm(SOURCE_VM)["host"],
        name=f"{SOURCE_VM}-instant-flow", nfs_port=0,
    ))
    assert started["state"] == "running"
    done = instant_restore(InstantRestoreSpec(**target, action="cancel", run=started["id"]))
    assert done["state"] == "cancelled"
    assert leftovers(Path(os.environ["VMKEEP_STATE_DIR"]) / "instant" / started["id"]) == []
