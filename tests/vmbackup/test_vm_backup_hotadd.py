"""The ``hotadd`` transport on the ESX lab (issue #14): vmkeep runs "in" the lab's mover VM
``vmkeep-mover01``, hot-adds the snapshot's disks to it read-only, reads them as local devices
(CBT: only the changed extents), detaches always — and after kill -9 the sweep detaches exactly
vmkeep's disk, never one someone else attached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env
from tests.vmbackup.vmbackup_helpers import lab_session, restored_hash, sha, vmkeep_snapshots
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.backup_vms import backup_vms
from vmkeep.flows.run import run_flow
from vmkeep.storage import crash_points
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import cbt, hotadd, inventory, snapshots
from vmkeep.vsphere.waiter import wait_for_task

pytestmark = pytest.mark.lab
VM = "hot01"  # 16 MiB ext4 + 8 MiB raw on datastore1 (esx02); no other test uses it
CHUNK = 256 * 1024


def _mover_state(lab: Any, name: str) -> tuple[list[str], dict[str, str]]:
    """(backing files of the mover's disks, its vmkeep.hotadd.* extraConfig)."""
    from pyVmomi import vim

    with lab_session(lab) as s:
        vm = next(v for v in inventory.list_vms(s) if v.name == name)
        devices = s.get(vm.ref, "config.hardware.device") or []
        extra = s.get(vm.ref, "config.extraConfig") or []
    files = [d.backing.fileName for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    marks = {o.key: o.value for o in extra if o.key.startswith(hotadd.MARK_PREFIX)}
    return files, marks


def _assert_clean(lab: Any, mover: dict[str, Any]) -> None:
    files, marks = _mover_state(lab, mover["name"])
    assert files == [f"[datastore1] {mover['name']}/{mover['name']}.vmdk"], files
    assert marks == {}
    assert os.listdir(mover["device_dir"]) == []
    assert vmkeep_snapshots(lab) == []


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """(hot-added file, bytes read from its device) per reader, as each is closed."""
    seen: list[tuple[str, int]] = []
    close = hotadd.HotaddReader.close

    def counting_close(self: hotadd.HotaddReader) -> None:
        if not self.closed:
            seen.append((self.attachment.file_name, self.source.bytes_read))
        close(self)

    monkeypatch.setattr(hotadd.HotaddReader, "close", counting_close)
    yield seen


def _chunks(extents: list[tuple[int, int]]) -> int:
    return len({i for off, n in extents for i in range(off // CHUNK, (off + n - 1) // CHUNK + 1)})


def test_full_and_cbt_incremental_through_hotadd(
    lab: Any, vc_env: dict[str, Any], repo: str, mover: dict[str, Any], tmp_path: Path,
    counted: list[tuple[str, int]],
) -> None:
    first = run_flow(backup_vm, False, repo=repo, vm=VM, transport="hotadd", cbt_audit="off",
                     **vc_env)
    point = Repository.open(repo).load_point(first["id"])
    assert [d.extra["transport"]["name"] for d in point.disks] == ["hotadd", "hotadd"]
    assert point.disks[0].extra["transport"]["reason"] == "--transport hotadd"
    for i in (0, 1):
        assert restored_hash(repo, first["id"], i, tmp_path) == sha(lab.read_disk(VM, i))
    assert len(counted) == 2 and all(n > 0 for _, n in counted)
    _assert_clean(lab, mover)

    # CBT: only what changed is read from the hot-added device (disk 1 not at all).
    counted.clear()
    changed = lab.write(VM, 3, disk=0, seed=1414)
    second = run_flow(backup_vm, False, repo=repo, vm=VM, transport="hotadd", cbt_audit="off",
                      **vc_env)
    assert [d["mode"] for d in second["disks"]] == ["cbt", "cbt"], second["disks"]
    assert [d["transport"] for d in second["disks"]] == ["hotadd", "hotadd"]
    by_file = dict(counted)
    point = Repository.open(repo).load_point(second["id"])
    disk0, disk1 = (d.extra["file_name"] for d in point.disks)
    # the content-defined cut of a new frame may look back into the previous frame when the
    # plan reads that one too (repository version 3): those bytes are read twice, never more
    lookback = (Repository.open(repo).config.image_cdc or {}).get("lookback", 0)
    extra = by_file[disk0] - sum(d["bytes_read"] for d in second["disks"])
    assert 0 <= extra <= (_chunks(changed) - 1) * lookback
    assert 0 < by_file[disk0] - extra <= _chunks(changed) * CHUNK
    assert by_file[disk0] >= sum(n for _, n in changed)
    assert by_file[disk1] == 0
    for i in (0, 1):
        assert restored_hash(repo, second["id"], i, tmp_path) == sha(lab.read_disk(VM, i))
    _assert_clean(lab, mover)


@pytest.mark.parametrize("vm", ["vsan01", "vvol01"])
def test_object_datastores_through_hotadd(
    lab: Any, vc_env: dict[str, Any], repo: str, mover: dict[str, Any], tmp_path: Path, vm: str
) -> None:
    """vSAN and vVol disks have no flat file for https; hot-add reads them, and auto picks it."""
    first = run_flow(backup_vm, False, repo=repo, vm=vm, transport="auto", **vc_env)
    point = Repository.open(repo).load_point(first["id"])
    assert point.disks[0].extra["transport"]["name"] == "hotadd", point.disks[0].extra
    assert restored_hash(repo, first["id"], 0, tmp_path) == sha(lab.read_disk(vm, 0))
    changed = lab.write(vm, 2, seed=77)
    second = run_flow(backup_vm, False, repo=repo, vm=vm, transport="hotadd", **vc_env)
    [disk] = second["disks"]
    assert disk["mode"] == "cbt" and disk["transport"] == "hotadd"
    assert disk["bytes_read"] <= _chunks(changed) * CHUNK + disk["size"] // 20  # + audit
    assert restored_hash(repo, second["id"], 0, tmp_path) == sha(lab.read_disk(vm, 0))
    _assert_clean(lab, mover)


def test_vms_in_parallel_share_the_mover(
    lab: Any, vc_env: dict[str, Any], repo: str, mover: dict[str, Any], tmp_path: Path,
    counted: list[tuple[str, int]],
) -> None:
    # hot01 (two disks) and small05 (read only: it stays clean) attach at the same time
    result = run_flow(backup_vms, False, repo=repo, names=[VM, "small05"], max_parallel=2,
                      transport="hotadd", **vc_env)
    assert result["failed"] == 0, result
    assert len(counted) == 3
    for summary in result["vms"]:
        point = Repository.open(repo).load_point(summary["id"])
        assert {d.extra["transport"]["name"] for d in point.disks} == {"hotadd"}
        for i in range(len(point.disks)):
            assert restored_hash(repo, summary["id"], i, tmp_path) == sha(
                lab.read_disk(summary["vm"], i)
            )
    _assert_clean(lab, mover)


def test_attach_refused_when_the_movers_host_cannot_see_the_datastore(
    lab: Any, vc_env: dict[str, Any], repo: str, mover: dict[str, Any]
) -> None:
    # local01 lives on esx03-local, which only esx03 mounts; the mover runs on esx01.
    with pytest.raises(hotadd.HotaddRefused) as refused:
        run_flow(backup_vm, False, repo=repo, vm="local01", transport="hotadd", **vc_env)
    assert refused.value.exit_code == 16 and "esx03-local" in refused.value.get_message()
    # asked anyway, vSphere (the lab) refuses it too, and nothing is left attached or marked
    with lab_session(lab) as s:
        the_mover = hotadd.find_mover(s, mover["name"])
        local = next(v for v in inventory.list_vms(s) if v.name == "local01")
        with pytest.raises(hotadd.HotaddRefused, match="InaccessibleDatastore"):
            hotadd.attach(s, the_mover, local.disks[0], "refused-run", local.instance_uuid)
    _assert_clean(lab, mover)
    # the mover cannot hot-add its own disks
    with pytest.raises(hotadd.HotaddRefused, match="the mover itself"):
        run_flow(backup_vm, False, repo=repo, vm=mover["name"], transport="hotadd", **vc_env)
    _assert_clean(lab, mover)
    # auto falls back to https for that disk and says why
    summary = run_flow(backup_vm, False, repo=repo, vm="local01", transport="auto", **vc_env)
    [disk] = Repository.open(repo).load_point(summary["id"]).disks
    assert disk.extra["transport"]["name"] == "https"
    assert "does not mount datastore esx03-local" in disk.extra["transport"]["reason"]
    # and auto hot-adds a disk the mover's host sees, saying so
    summary = run_flow(backup_vm, False, repo=repo, vm=VM, transport="auto", **vc_env)
    point = Repository.open(repo).load_point(summary["id"])
    assert {d.extra["transport"]["name"] for d in point.disks} == {"hotadd"}
    assert "sees datastore datastore1" in point.disks[0].extra["transport"]["reason"]
    _assert_clean(lab, mover)


def test_the_mover_is_found_by_name_or_bios_uuid(
    lab: Any, mover: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(hotadd.MOVER_ENV)
    with lab_session(lab) as s:
        by_name = hotadd.find_mover(s, mover["name"])
        assert by_name.host == mover["host"] and by_name.enable_uuid
        assert {"datastore1", "datastore2"} <= by_name.datastores
        assert "esx03-local" not in by_name.datastores
        assert by_name.datacenter == "Region/DC1"  # the datacenter its datastore names mean
        assert hotadd.find_mover(s, mover["bios_uuid"]).name == mover["name"]
        # inside the VM: SMBIOS gives the UUID with its first three fields byte-swapped
        dmi = tmp_path / "product_uuid"
        dmi.write_text(hotadd._swapped(mover["bios_uuid"]).upper() + "\n")
        monkeypatch.setattr(hotadd, "DMI_UUID_FILE", str(dmi))
        assert hotadd.find_mover(s).name == mover["name"]
        with pytest.raises(hotadd.MoverNotFound):
            hotadd.find_mover(s, "no-such-mover")


def test_a_failed_detach_is_logged_not_raised_and_the_sweep_detaches(
    lab: Any, mover: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with lab_session(lab) as s:
        vm = next(v for v in inventory.list_vms(s) if v.name == VM)
        taken = snapshots.create_snapshot(s, vm.ref, "hotadd-detach-fails", quiesce=False)
        disk = cbt.snapshot_disks(s, taken.ref)[vm.disks[0].key]
        the_mover = hotadd.find_mover(s)
        reader = hotadd.open_hotadd(s, disk, the_mover, "hotadd-detach-fails", vm.instance_uuid)
        assert reader.pread(4096, 8192) == lab.read_disk(VM, 0, taken.name, 4096, 8192)
        with lab.fault("soap_fault", "ReconfigVM_Task", count=1):
            reader.close()  # the detach fails: logged, not raised
        assert "the sweep will" in caplog.text
        files, marks = _mover_state(lab, mover["name"])
        assert disk.file_name in files and len(marks) == 1
        young = hotadd.sweep_hotadd(s, timedelta(hours=1), set())
        assert young.kept and not young.detached  # too young for the sweep
        running = hotadd.sweep_hotadd(s, timedelta(0), {"hotadd-detach-fails"})
        assert running.kept and not running.detached  # its run is still active
        report = hotadd.sweep_hotadd(s, timedelta(0), set())
        assert len(report.detached) == 1 and disk.file_name in report.detached[0]
        snapshots.remove_snapshot(s, vm.ref, taken.ref, taken.name)
    _assert_clean(lab, mover)


@pytest.fixture
def someone_elses_disk(lab: Any, mover: dict[str, Any]) -> Iterator[str]:
    """Another product attaches the template's disk to the mover (no vmkeep mark)."""
    from pyVmomi import vim

    with lab_session(lab) as s:
        the_mover = hotadd.find_mover(s, mover["name"])
        tmpl = next(v for v in inventory.list_vms(s) if v.name == "tmpl-linux")
        devices = s.get(the_mover.ref, "config.hardware.device")
        ctrl = next(d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController))
        disk = vim.vm.device.VirtualDisk(
            key=-1, controllerKey=ctrl.key, unitNumber=9,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=tmpl.disks[0].file_name, diskMode="independent_nonpersistent"),
        )
        spec = vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=disk)])
        wait_for_task(s, the_mover.ref.ReconfigVM_Task(spec))
    theirs = tmpl.disks[0].file_name
    yield theirs
    with lab_session(lab) as s:
        the_mover = hotadd.find_mover(s, mover["name"])
        devices = s.get(the_mover.ref, "config.hardware.device")
        dev = next(d for d in devices if getattr(d.backing, "fileName", "") == theirs)
        spec = vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="remove", device=dev)])
        wait_for_task(s, the_mover.ref.ReconfigVM_Task(spec))
    _assert_clean(lab, mover)


def test_kill_9_after_attach_then_the_sweep_detaches_only_vmkeeps_disk(
    lab: Any, vc_env: dict[str, Any], repo: str, mover: dict[str, Any], tmp_path: Path,
    someone_elses_disk: str,
) -> None:
    marker = tmp_path / "parked"
    env = cli_env(PREFECT_API_URL="", VMKEEP_REPO=repo, **{
        crash_points.ENV_AT: "hotadd-attached:1", crash_points.ENV_MARKER: str(marker)})
    conn = ["--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"]]
    log = tmp_path / "backup.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*VMKEEP, "backup", "vm", VM, *conn, "--transport", "hotadd", "--mover",
             mover["name"], "--no-prefect", "-v"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 900  # waits for the crash point; only stops a hang
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"never parked; the backup said: {log.read_text()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    files, marks = _mover_state(lab, mover["name"])
    assert someone_elses_disk in files and len(files) == 3  # system disk, theirs, ours
    [(key, value)] = marks.items()
    ours = hotadd.parse_mark(key, value)
    assert ours is not None and ours.file_name in files
    assert len(os.listdir(mover["device_dir"])) == 2
    # vSphere cannot consolidate a snapshot whose frozen disk a mover still holds
    with lab_session(lab) as s:
        report = snapshots.sweep_snapshots(s, timedelta(0), set())
    assert not report.removed and report.failed and "FileLocked" in report.failed[0][1]

    sweep = subprocess.run(
        [*VMKEEP, "sweep", *conn, "--older-than", "0", "--json", "--no-prefect"],
        env=cli_env(PREFECT_API_URL=""), capture_output=True, text=True,
    )
    assert sweep.returncode == 0, sweep.stderr
    result = json.loads(sweep.stdout)
    assert len(result["detached"]) == 1 and ours.file_name in result["detached"][0]
    assert len(result["removed"]) == 1 and not result["failed"]
    files, marks = _mover_state(lab, mover["name"])
    assert someone_elses_disk in files and ours.file_name not in files and marks == {}
    [left] = os.listdir(mover["device_dir"])  # theirs stays visible to the mover's OS
    assert vmkeep_snapshots(lab) == []
    assert Repository.open(repo).list_points() == []
    assert left.startswith("scsi-3")


def test_the_crash_hook_detaches_the_runs_disks_before_removing_its_snapshot(
    lab: Any, vc_env: dict[str, Any], repo: str, mover: dict[str, Any]
) -> None:
    """Prefect's on_crashed/on_cancellation hook of backup-vm: this run's hot-added disks are
    detached first (else vSphere could not consolidate), then its snapshot is removed."""
    from types import SimpleNamespace

    from vmkeep.flows.backup_vm import _release_hook

    run_id = "crash-hook-run"
    with lab_session(lab) as s:
        vm = next(v for v in inventory.list_vms(s) if v.name == VM)
        taken = snapshots.create_snapshot(s, vm.ref, run_id, quiesce=False)
        disks = cbt.snapshot_disks(s, taken.ref)
        readers = [
            hotadd.open_hotadd(s, d, hotadd.find_mover(s), run_id, vm.instance_uuid)
            for d in disks.values()
        ]
    files, marks = _mover_state(lab, mover["name"])
    assert len(files) == 3 and len(marks) == 2
    spec = {"vm": VM, "repo": repo, "vcenter": vc_env["vcenter"], "cafile": vc_env["cafile"]}
    _release_hook(None, SimpleNamespace(id=run_id, parameters={"spec": spec}), None)
    for reader in readers:  # the crashed process's file handles, as the OS would drop them
        reader.attachment.detached = True
        reader.close()
    _assert_clean(lab, mover)
