"""Datastore free space before a snapshot, on the lab (its datastores report the space a
``ds_full`` rule sets, and it refuses a snapshot where < 64 MiB are left, like ESXi): below the
skip threshold a VM is skipped with nothing changed on it, between the thresholds it is backed up
with a warning, and the other VMs of a run go on."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.restore.restore_helpers import run_cli
from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.backup_vms import SomeBackupsFailed, backup_vms
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository
from vmkeep.vsphere.errors import DatastoreSpaceLow, SnapshotFailed

pytestmark = pytest.mark.lab
VM = "legacy01"  # on datastore2 (VMFS5), 16 MiB ext4; its home is there too
OTHER = "app01"  # on datastore3
DATASTORE = "datastore2"
CAPACITY = 500 << 30  # what every lab datastore reports


def _free(percent: float) -> int:
    return int(CAPACITY * percent / 100)


def _cbt(lab: Any, name: str) -> bool:
    return bool(find_vm(lab.connect(), name).config.changeTrackingEnabled)


def test_below_the_skip_threshold_the_vm_is_skipped_untouched(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    quiesces = len(lab.client.guest_log(VM)["quiesce"] or [])
    cbt_before = _cbt(lab, VM)
    with lab.fault("ds_full", DATASTORE, count=0, bytes=_free(3)):
        with pytest.raises(DatastoreSpaceLow) as caught:
            run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
        code, _out, err = run_cli("backup", "vm", VM, "--vcenter", vc_env["vcenter"],
                                 "--cafile", vc_env["cafile"], repo=repo)
    message = caught.value.get_message()
    assert f"VM {VM} skipped, no snapshot taken: datastore {DATASTORE}: 3.0 % free" in message
    assert code == 16 and "Traceback" not in err, (code, err)
    assert f"datastore {DATASTORE}: 3.0 % free" in err
    assert vmkeep_snapshots(lab) == []
    assert len(lab.client.guest_log(VM)["quiesce"] or []) == quiesces  # never frozen
    assert _cbt(lab, VM) == cbt_before  # CBT not enabled either: nothing changed on the VM
    assert Repository.open(repo).list_points() == []


def test_between_the_thresholds_the_backup_warns_and_records_it(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    with lab.fault("ds_full", DATASTORE, count=0, bytes=_free(8)):
        summary = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    [warning] = [w for w in summary["warnings"] if w.startswith("datastore ")]
    assert warning.startswith(f"datastore {DATASTORE}: 8.0 % free (40.0 GiB of 500.0 GiB)")
    assert warning in Repository.open(repo).load_point(summary["id"]).meta["warnings"]
    assert summary["snapshot_removed"] and vmkeep_snapshots(lab) == []


def test_the_lab_refuses_a_snapshot_on_a_full_datastore_when_the_check_is_off(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab is as strict as ESXi: with vmkeep's check switched off, the snapshot itself
    fails (NoDiskSpace) — and no snapshot is left."""
    remove_all_snapshots(find_vm(lab.connect(), VM))
    monkeypatch.setenv("VMKEEP_DATASTORE_SKIP_FREE_PERCENT", "0")
    monkeypatch.setenv("VMKEEP_DATASTORE_WARN_FREE_PERCENT", "0")
    with (lab.fault("ds_full", DATASTORE, count=0, bytes=10 << 20),
          pytest.raises(SnapshotFailed) as caught):
        run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    assert "Insufficient disk space on datastore 'datastore2'" in caught.value.get_message()
    assert vmkeep_snapshots(lab) == []


def test_a_run_of_many_vms_skips_only_the_one_on_the_full_datastore(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    for name in (VM, OTHER):
        remove_all_snapshots(find_vm(lab.connect(), name))
    with (lab.fault("ds_full", DATASTORE, count=0, bytes=_free(1)),
          pytest.raises(SomeBackupsFailed) as caught):
        run_flow(backup_vms, False, repo=repo, patterns=[VM, OTHER], **vc_env)
    results = {r["vm"]: r for r in caught.value.summary["vms"]}
    assert "no snapshot taken" in results[VM]["error"]
    assert "error" not in results[OTHER] and results[OTHER]["id"]
    assert [p.meta["vm_name"] for p in Repository.open(repo).list_points()] == [OTHER]
    assert vmkeep_snapshots(lab) == []


def test_the_datastores_report_the_space_again_when_the_rule_is_cleared(lab: Any) -> None:
    from pyVmomi import vim

    def free() -> int:
        si = lab.connect()
        view = si.content.viewManager.CreateContainerView(si.content.rootFolder,
                                                          [vim.Datastore], True)
        return next(d.summary.freeSpace for d in view.view if d.name == DATASTORE)

    before = free()
    with lab.fault("ds_full", DATASTORE, count=0, bytes=_free(2)):
        assert free() == _free(2)
    assert free() == before
