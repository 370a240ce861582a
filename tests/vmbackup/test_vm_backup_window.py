"""The backup window of a many-VM run (``stop_after``, :mod:`vmkeep.jobs.backup_window`) on the
lab: the window's clock is moved by the test (never waited for); VMs not started when it ends are
failures of the run, a VM already running finishes, and no retry is made whose pause ends after
it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots
from vmkeep.flows.backup_vms import SomeBackupsFailed, backup_vms
from vmkeep.flows.run import run_flow
from vmkeep.jobs import backup_window, specs, vm_retries
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
T0 = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
FIRST, SECOND = "small01", "small02"


def _times(monkeypatch: pytest.MonkeyPatch, *times: datetime) -> None:
    """The window's clock answers ``times`` in turn, then the last one for ever."""
    queue: Iterator[datetime] = iter(times)
    last = [times[0]]

    def now() -> datetime:
        last[0] = next(queue, last[0])
        return last[0]

    monkeypatch.setattr(backup_window, "clock", SimpleNamespace(now=now))


@pytest.fixture(autouse=True)
def _clean(lab: Any) -> None:
    for name in (FIRST, SECOND):
        remove_all_snapshots(find_vm(lab.connect(), name))


def test_vms_not_started_when_the_window_ends_are_failures(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run start, the first VM's turn, the second VM's turn (two hours later)
    _times(monkeypatch, T0, T0 + timedelta(minutes=1), T0 + timedelta(hours=2))
    with pytest.raises(SomeBackupsFailed) as caught:
        run_flow(backup_vms, False, repo=repo, names=[FIRST, SECOND], max_parallel=1,
                 stop_after="1h", **vc_env)
    results = {r["vm"]: r for r in caught.value.summary["vms"]}
    assert "error" not in results[FIRST] and results[FIRST]["attempts"] == 1
    assert results[SECOND]["error"] == (
        "not started: the backup window ended at 2026-12-06 02:00:00 UTC (1h after the run "
        "began)")
    assert results[SECOND]["attempts"] == 0
    assert [p.meta["vm_name"] for p in Repository.open(repo).list_points()] == [FIRST]
    assert vmkeep_snapshots(lab) == []


def test_no_retry_is_made_whose_pause_ends_after_the_window(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _times(monkeypatch, T0)
    pauses: list[float] = []
    monkeypatch.setattr(vm_retries, "time", SimpleNamespace(sleep=pauses.append))
    with lab.fault("snapshot_create", FIRST, count=1), \
            pytest.raises(SomeBackupsFailed) as caught:
        run_flow(backup_vms, False, repo=repo, names=[FIRST, SECOND], retries=3,
                 retry_wait_s=7200, stop_after="1h", **vc_env)
    results = {r["vm"]: r for r in caught.value.summary["vms"]}
    assert "Injected fault" in results[FIRST]["error"] and results[FIRST]["attempts"] == 1
    assert "error" not in results[SECOND]
    assert pauses == []  # the 2 h pause would end after the 1 h window


def test_the_window_is_a_duration_checked_before_the_run() -> None:
    spec = specs.build(specs.BackupVmsSpec, {"repo": "/r", "vcenter": "vc", "stop_after": "5h"})
    assert spec.stop_after == "5h"
    assert specs.build(specs.BackupVmsSpec, {"repo": "/r", "vcenter": "vc",
                                             "stop_after": ""}).stop_after is None
    with pytest.raises(specs.InvalidSpec) as caught:
        specs.build(specs.BackupVmsSpec, {"repo": "/r", "vcenter": "vc", "stop_after": "soon"})
    assert "stop_after" in caught.value.get_message()


def test_the_command_line_takes_the_window(vc_env: dict[str, Any], repo: str) -> None:
    """``--stop-after 0s``: the window has ended before the first VM's turn."""
    from tests.restore.restore_helpers import run_cli

    code, _out, err = run_cli("backup", "vm", FIRST, "--stop-after", "0s", "--vcenter",
                              vc_env["vcenter"], "--cafile", vc_env["cafile"], repo=repo)
    assert code == 1 and "Traceback" not in err, err
    assert f"{FIRST}: failed: not started: the backup window ended" in err
    assert Repository.open(repo).list_points() == []
    code, _out, err = run_cli("backup", "vm", FIRST, "--stop-after", "soon", "--vcenter",
                              vc_env["vcenter"], "--cafile", vc_env["cafile"], repo=repo)
    assert code == 2 and "--stop-after: not a duration" in err, err
