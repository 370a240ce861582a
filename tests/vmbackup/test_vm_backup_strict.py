"""VM backups on the strict lab read from the VM's host; an unreachable host falls back to vCenter
and the restore point says so; a server ignoring Range fails the run cleanly (typed error, the
snapshot released).  VM: small03 (snapshots only; its content is compared, never changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.vmbackup.vmbackup_helpers import restored_hash, sha, vmkeep_snapshots
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository
from vmkeep.vsphere.errors import RangeIgnored

pytestmark = pytest.mark.lab
VM = "small03"


def test_backup_reads_from_the_host_and_falls_back_to_vcenter_with_a_warning(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    expected = sha(lab.read_disk(VM, 0))
    summary = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    assert not any("unreachable" in w for w in summary["warnings"])
    assert restored_hash(repo, summary["id"], 0, tmp_path) == expected
    host = lab.vm(VM)["host"]
    with lab.fault("host_unreachable", host, count=0):
        fallback = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    notes = [w for w in fallback["warnings"] if "unreachable" in w]
    assert notes and host in notes[0] and "through vCenter" in notes[0]
    point = Repository.open(repo).load_point(fallback["id"])
    assert any("through vCenter" in w for w in point.meta["warnings"])
    assert restored_hash(repo, fallback["id"], 0, tmp_path) == expected


def test_a_server_ignoring_range_fails_the_run_cleanly(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    with lab.fault("ds_norange", f"{VM}-flat", count=0), pytest.raises(RangeIgnored):
        run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    assert vmkeep_snapshots(lab) == []
