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
