"""Retrying failed VM backups (:mod:`vmkeep.jobs.vm_retries`) on the lab: a snapshot that fails
once is taken again after the pause; a many-VM run retries only its failed VMs, once per pass;
what a pause cannot mend is not retried.  Pauses are recorded, never slept."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.restore.restore_helpers import run_cli
from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.backup_vms import SomeBackupsFailed, backup_vms
from vmkeep.flows.run import run_flow
from vmkeep.jobs import vm_retries
from vmkeep.storage.repository import Repository
from vmkeep.vsphere.errors import NotFound, SnapshotFailed

pytestmark = pytest.mark.lab
VM = "legacy01"
OTHER = "app01"


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    taken: list[float] = []
    monkeypatch.setattr(vm_retries, "time", SimpleNamespace(sleep=taken.append))
    return taken


@pytest.fixture(autouse=True)
def _no_snapshots(lab: Any) -> None:
    for name in (VM, OTHER):
        remove_all_snapshots(find_vm(lab.connect(), name))


def _points(repo: str) -> list[str]:
    return [p.meta["vm_name"] for p in Repository.open(repo).list_points()]


def test_a_snapshot_that_failed_once_is_taken_again_after_the_pause(
    lab: Any, vc_env: dict[str, Any], repo: str, pauses: list[float]
) -> None:
    with lab.fault("snapshot_create", VM, count=1):
        summary = run_flow(backup_vm, False, repo=repo, vm=VM, retries=2, retry_wait_s=300,
                           **vc_env)
    assert summary["attempts"] == 2 and pauses == [300]
    assert _points(repo) == [VM] and vmkeep_snapshots(lab) == []


def test_without_retries_the_first_failure_ends_the_backup(
    lab: Any, vc_env: dict[str, Any], repo: str, pauses: list[float]
) -> None:
    with lab.fault("snapshot_create", VM, count=1), pytest.raises(SnapshotFailed):
        run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    assert pauses == [] and _points(repo) == []


def test_a_vm_that_is_not_found_is_not_retried(
    vc_env: dict[str, Any], repo: str, pauses: list[float]
) -> None:
    with pytest.raises(NotFound):
        run_flow(backup_vm, False, repo=repo, vm="no-such-vm", retries=3, retry_wait_s=1,
                 **vc_env)
    assert pauses == []


def test_a_run_retries_only_its_failed_vms_once_per_pass(
    lab: Any, vc_env: dict[str, Any], repo: str, pauses: list[float]
) -> None:
    with lab.fault("snapshot_create", VM, count=2):  # fails the first two attempts
        result = run_flow(backup_vms, False, repo=repo, patterns=[VM, OTHER], retries=3,
                          retry_wait_s=60, **vc_env)
    attempts = {r["vm"]: r["attempts"] for r in result["vms"]}
    assert attempts == {VM: 3, OTHER: 1} and result["failed"] == 0
    assert pauses == [60, 60]
    assert sorted(_points(repo)) == sorted([VM, OTHER])  # OTHER backed up once, not again
    assert vmkeep_snapshots(lab) == []


def test_retries_run_out_and_the_run_fails_naming_the_vm(
    lab: Any, vc_env: dict[str, Any], repo: str, pauses: list[float]
) -> None:
    with lab.fault("snapshot_create", VM, count=0), pytest.raises(SomeBackupsFailed) as caught:
        run_flow(backup_vms, False, repo=repo, patterns=[VM, OTHER], retries=2,
                 retry_wait_s=10, **vc_env)
    results = {r["vm"]: r for r in caught.value.summary["vms"]}
    assert results[VM]["attempts"] == 3 and "Injected fault" in results[VM]["error"]
    assert "exception" not in results[VM]
    assert results[OTHER]["attempts"] == 1 and "error" not in results[OTHER]
    assert pauses == [10, 10] and _points(repo) == [OTHER]


def test_the_command_line_retries_when_asked(
    lab: Any, vc_env: dict[str, Any], repo: str, pauses: list[float]
) -> None:
    with lab.fault("snapshot_create", VM, count=1):
        code, out, err = run_cli("backup", "vm", VM, "--vcenter", vc_env["vcenter"], "--cafile",
                                 vc_env["cafile"], "--retries", "1", "--retry-wait", "5",
                                 "--json", repo=repo)
    assert code == 0, err
    assert '"attempts": 2' in out and pauses == [5]


def test_under_prefect_the_failed_vm_is_retried_as_a_task_run_of_its_own(
    prefect_api: str, lab: Any, vc_env: dict[str, Any], repo: str, pauses: list[float]
) -> None:
    """The failure comes back from the task run's state (the exception's class survives), the
    slots of the first pass went back, and the retry asks for them again."""
    with lab.fault("snapshot_create", VM, count=1):
        result = run_flow(backup_vms, True, repo=repo, patterns=[VM, OTHER], retries=1,
                          retry_wait_s=30, **vc_env)
    assert {r["vm"]: r["attempts"] for r in result["vms"]} == {VM: 2, OTHER: 1}
    assert pauses == [30] and vmkeep_snapshots(lab) == []
