"""Disk exclusions on the lab (Veeam's "exclude disks"): an excluded disk is not read and not in
the point, which records it; a VM restore creates it empty (or leaves it out); included again,
it is read whole; excluding every disk is refused before anything changes on the VM."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_lab import destroy_vm
from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.restore_vm import restore_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository
from vmkeep.vsphere.disk_selection import AllDisksExcluded

pytestmark = pytest.mark.lab
VM = "hot01"  # 16 MiB ext4 + 8 MiB raw data on datastore1; nothing writes to it
DATA = 8 << 20


def _disks(lab: Any) -> list[tuple[int, str]]:
    devices = find_vm(lab.connect(), VM).config.hardware.device
    return [(d.key, d.deviceInfo.label) for d in devices if type(d).__name__.endswith("Disk")]


def test_an_excluded_disk_is_recorded_restored_empty_and_read_whole_when_included(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    (key0, _), (key1, label1) = _disks(lab)
    code, out, err = run_cli("backup", "vm", VM, "--exclude-disk", f"{VM}/scsi0:1",
                             "--exclude-disk", f"{VM}/scsi7:0", "--vcenter", vc_env["vcenter"],
                             "--cafile", vc_env["cafile"], "--json", repo=repo)
    assert code == 0, err
    summary = json.loads(out)
    assert [d["key"] for d in summary["disks"]] == [key0]
    assert summary["excluded_disks"] == [{"key": key1, "label": label1, "node": "scsi0:1",
                                          "capacity": DATA, "rule": f"{VM}/scsi0:1"}]
    assert any(w.startswith(f"disk exclusion '{VM}/scsi7:0' matches no disk of {VM}")
               for w in summary["warnings"])
    point = Repository.open(repo).load_point(summary["id"])
    assert len(point.disks) == 1 and point.meta["excluded_disks"] == summary["excluded_disks"]
    assert summary["snapshot_removed"] and vmkeep_snapshots(lab) == []
    code, out, err = run_cli("ls", summary["id"][:12], "--json", repo=repo)
    assert code == 0, err
    listed = json.loads(out)
    assert listed["excluded_disks"] == summary["excluded_disks"]
    assert [d["node"] for d in listed["disks"]] == ["scsi0:0"]
    code, out, _err = run_cli("ls", summary["id"][:12], repo=repo)
    assert f"excluded  {label1} (scsi0:1, 8.0 MiB): not backed up (rule '{VM}/scsi0:1')" in out

    new = f"{VM}-nodata"
    try:
        restored = run_flow(restore_vm, False, repo=repo, point=summary["id"], name=new,
                            **vc_env)
        assert len(restored["disks"]) == 1
        assert (f"disk {key1} ({label1}) was excluded from the backup (rule '{VM}/scsi0:1'): "
                "created empty") in restored["warnings"]
        assert lab.read_disk(new, 1) == bytes(DATA)  # there, and empty
        assert lab.read_disk(new, 0) == lab.read_disk(VM, 0)
        dropped = run_flow(restore_vm, False, repo=repo, point=summary["id"], name=new,
                           overwrite=True, drop_excluded_disks=True, **vc_env)
        assert any("left out of the new VM" in w for w in dropped["warnings"])
        devices = find_vm(lab.connect(), new).config.hardware.device
        assert len([d for d in devices if type(d).__name__.endswith("Disk")]) == 1
    finally:
        destroy_vm(lab, new)

    again = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    modes = {d["key"]: d["mode"] for d in again["disks"]}
    assert modes[key1] == "full"  # no earlier backup of it: read whole
    assert again["excluded_disks"] == []


def test_excluding_every_disk_is_refused_before_anything_changes(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    quiesces = len(lab.client.guest_log(VM)["quiesce"] or [])
    with pytest.raises(AllDisksExcluded):
        run_flow(backup_vm, False, repo=repo, vm=VM, exclude_disks=["Hard disk *"], **vc_env)
    code, _out, err = run_cli("backup", "vm", VM, "--exclude-disk", "scsi0:*",
                              "--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"],
                              repo=repo)
    assert code == 14 and "Traceback" not in err, err
    assert f"VM {VM} has nothing left to back up" in err
    assert vmkeep_snapshots(lab) == []
    assert len(lab.client.guest_log(VM)["quiesce"] or []) == quiesces
    assert Repository.open(repo).list_points() == []


def test_a_rule_naming_one_vm_leaves_the_others_of_a_run_whole(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    for name in (VM, "small05"):
        remove_all_snapshots(find_vm(lab.connect(), name))
    code, out, err = run_cli("backup", "vm", VM, "small05", "--exclude-disk", f"{VM}/scsi0:1",
                             "--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"],
                             "--json", repo=repo)
    assert code == 0, err
    by_vm = {r["vm"]: r for r in json.loads(out)}
    assert [d["node"] for d in by_vm[VM]["excluded_disks"]] == ["scsi0:1"]
    assert len(by_vm[VM]["disks"]) == 1
    assert by_vm["small05"]["excluded_disks"] == [] and len(by_vm["small05"]["disks"]) == 1
    assert not [w for w in by_vm["small05"]["warnings"] if "disk exclusion" in w]
