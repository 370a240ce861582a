"""The community tier against the ESX lab (#20 item 1): a fresh installation backs up VMs with no
licence at all; the 11th workload is refused before any snapshot, naming what to buy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.security.licence_helpers import record_clients
from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.backup_vms import backup_vms
from vmkeep.flows.run import run_flow
from vmkeep.licensing.errors import LicenceRefused
from vmkeep.licensing.ledger import Ledger
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab


@pytest.fixture
def vc(esx_lab: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("VMKEEP_VC_USER", esx_lab.user)
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", esx_lab.password)
    return {"vcenter": esx_lab.url, "cafile": esx_lab.cafile}


@pytest.fixture
def repo(tmp_path: Path) -> str:
    Repository.init(str(tmp_path / "repo"), image_chunk_size=256 * 1024)
    return str(tmp_path / "repo")


def test_first_vm_backup_needs_no_licence(esx_lab: Any, vc: dict[str, Any], repo: str) -> None:
    summary = run_flow(backup_vm, False, repo=repo, vm="small01", **vc)
    assert summary["snapshot_removed"]
    [item] = Ledger().read()
    assert item.kind == "vm" and item.identity == f"uuid:{summary['instance_uuid'].lower()}"


def test_the_eleventh_workload_is_refused_before_any_snapshot(
    esx_lab: Any, vc: dict[str, Any], repo: str
) -> None:
    record_clients(10)  # ten workloads already protected by this installation
    with pytest.raises(LicenceRefused, match="community tier") as info:
        run_flow(backup_vm, False, repo=repo, vm="small01", **vc)
    # 1 ESX host, 1 guest, 10 clients: the planner's purchase for the whole site
    assert info.value.missing == {"backup_client": 10, "esx_server_client_5seat": 1}
    assert vmkeep_snapshots(esx_lab) == []
    assert Repository.open(repo).list_points() == []


def test_a_selection_beyond_the_tier_is_refused_as_a_whole(
    esx_lab: Any, vc: dict[str, Any], repo: str
) -> None:
    record_clients(8)
    with pytest.raises(LicenceRefused, match="community tier"):
        run_flow(backup_vms, False, repo=repo, patterns=["small*"], max_parallel=2, **vc)
    assert vmkeep_snapshots(esx_lab) == []
    assert Repository.open(repo).list_points() == []
