"""``VMKEEP_LIMIT_READ`` on the lab: a VM backup reads its snapshot disks through the process's
read bucket — directly (https) and when a staging proxy copies them first — and the restore
point is unchanged by it.  Durations are checked as lower bounds only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.vmbackup.vmbackup_helpers import restored_hash, sha
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.rate_limit import source_reads

pytestmark = pytest.mark.lab
VM = "app01"  # two disks (32 MiB ext4, 16 MiB raw)


@pytest.mark.parametrize("staged", [False, True], ids=["direct", "staged"])
def test_a_vm_backup_keeps_to_the_read_limit(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, staged: bool,
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    monkeypatch.setenv("VMKEEP_LIMIT_READ", "16384")  # 16 MiB/s
    limit = source_reads()
    assert limit is not None and limit.rate == 16 << 20
    extra = {"stage_dir": str(tmp_path / "stage")} if staged else {}
    booked, start = limit.booked, time.monotonic()
    run = run_flow(backup_vm, False, repo=repo, vm=VM, read_whole=True, **extra, **vc_env)
    took, booked = time.monotonic() - start, limit.booked - booked
    read = sum(d["bytes_read"] for d in run["disks"])
    assert read > 0 and booked >= read  # every byte read from the snapshot was booked
    assert took >= (booked - limit.burst) / limit.rate
    out = tmp_path / "export.raw"
    lab.export_disk(VM, 1, out)
    assert restored_hash(repo, run["id"], 1, tmp_path) == sha(out.read_bytes())
