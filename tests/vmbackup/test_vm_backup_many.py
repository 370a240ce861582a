"""Many VMs at once: selection by pattern, concurrent subflows, snapshot limits that hold."""

from __future__ import annotations

from typing import Any

import pytest

from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots
from vmkeep.flows.backup_vms import NothingSelected, backup_vms
from vmkeep.flows.run import run_flow
from vmkeep.tasks import limits

pytestmark = pytest.mark.lab


def test_limits_hold_per_datastore_and_host(lab: Any, vc_env: dict[str, Any], repo: str) -> None:
    limits.PEAKS.clear()
    with lab.fault("ds_slow", None, count=0, delay=0.02):  # long enough to overlap
        result = run_flow(
            backup_vms, False, repo=repo, patterns=["small0*"], max_parallel=4,
            concurrency={"datastore": 1, "host": 2}, **vc_env,
        )
    assert result["failed"] == 0 and len(result["vms"]) >= 3
    ds_peaks = {k: v for k, v in limits.PEAKS.items() if "-datastore-" in k}
    host_peaks = {k: v for k, v in limits.PEAKS.items() if "-host-" in k}
    assert ds_peaks and max(ds_peaks.values()) == 1
    assert host_peaks and max(host_peaks.values()) <= 2
    assert vmkeep_snapshots(lab) == []


def test_parallel_backups_do_overlap_without_limits(vc_env: dict[str, Any], repo: str,
                                                    lab: Any) -> None:
    limits.PEAKS.clear()
    with lab.fault("ds_slow", None, count=0, delay=0.02):
        run_flow(backup_vms, False, repo=repo, patterns=["small0*"], max_parallel=4,
                 concurrency={"datastore": 8, "host": 8}, **vc_env)
    assert max(v for k, v in limits.PEAKS.items() if "-datastore-" in k) > 1


def test_empty_selection_is_a_clear_error(vc_env: dict[str, Any], repo: str) -> None:
    with pytest.raises(NothingSelected):
        run_flow(backup_vms, False, repo=repo, patterns=["no-such-vm-*"], **vc_env)


def test_a_named_vm_that_is_not_found_fails_the_run_after_the_others(
    vc_env: dict[str, Any], repo: str, lab: Any
) -> None:
    """Mistyped, renamed or deleted: a VM given by name is never skipped in silence."""
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    from vmkeep.flows.backup_vms import SomeBackupsFailed

    si = lab.connect()
    try:
        view = si.content.viewManager.CreateContainerView(
            si.content.rootFolder, [vim.VirtualMachine], True
        )
        uuid = next(v.config.instanceUuid for v in view.view if v.name == "small02")
    finally:
        Disconnect(si)
    with pytest.raises(SomeBackupsFailed) as failed:
        run_flow(backup_vms, False, repo=repo, names=["small01", uuid, "no-such-vm"],
                 patterns=["zz-*"], **vc_env)
    assert failed.value.exit_code == 1 and "no-such-vm" in failed.value.get_message()
    results = {r["vm"]: r for r in failed.value.summary["vms"]}
    assert set(results) == {"small01", "small02", "no-such-vm"}  # small02 found by its uuid
    assert "id" in results["small01"] and "id" in results["small02"]
    assert results["no-such-vm"]["error"] == "no VM has this name or instanceUuid"
