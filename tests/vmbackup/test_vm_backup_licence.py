"""Licence enforcement in the VM backup flow: one seat too few is refused before any snapshot;
restores and listings keep working without a licence."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.licensing.licensing_devkeys import write_licence
from tests.vmbackup.vmbackup_helpers import vm_host, vmkeep_snapshots
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.licensing.errors import LicenceRefused
from vmkeep.storage.disk_backup import commit_point
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab


def protect(repo: str, n: int, host: str) -> None:
    """Pretend ``n`` other guests on ``host`` are already protected (restore points)."""
    repository = Repository.open(repo)
    for i in range(n):
        commit_point(repository, f"other{i}", [], kind="vm",
                     meta={"instance_uuid": f"uuid-other-{i}", "host": host})


@pytest.fixture
def five_seats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev_trusted: None) -> None:
    licence = write_licence(tmp_path / "licence.json", esx_server_client_5seat=1)
    monkeypatch.setenv("VMKEEP_LICENSE", str(licence))


def test_one_seat_too_few_is_refused_before_a_snapshot(
    lab: Any, vc_env: dict[str, Any], repo: str, five_seats: None
) -> None:
    protect(repo, 5, vm_host(lab, "small01"))
    with pytest.raises(LicenceRefused, match="Add-on"):
        run_flow(backup_vm, False, repo=repo, vm="small01", **vc_env)
    assert vmkeep_snapshots(lab) == []
    assert [p.name for p in Repository.open(repo).list_points()].count("small01") == 0


def test_the_last_seat_is_granted(lab: Any, vc_env: dict[str, Any], repo: str,
                                  five_seats: None) -> None:
    protect(repo, 4, vm_host(lab, "small01"))
    summary = run_flow(backup_vm, False, repo=repo, vm="small01", **vc_env)
    assert summary["snapshot_removed"]
    # the same guest again needs no new seat
    run_flow(backup_vm, False, repo=repo, vm="small01", **vc_env)


def test_an_expired_licence_refuses_backups_not_restores(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = run_flow(backup_vm, False, repo=repo, vm="small01", **vc_env)
    expired = write_licence(tmp_path / "expired.json", issued=date(2020, 1, 1),
                            expires=date(2021, 1, 1), esx_server_client_5seat=9)
    monkeypatch.setenv("VMKEEP_LICENSE", str(expired))
    with pytest.raises(LicenceRefused):
        run_flow(backup_vm, False, repo=repo, vm="small01", **vc_env)
    from vmkeep.flows.restore_image import restore_image

    out = tmp_path / "disk.raw"
    run_flow(restore_image, False, repo=repo, point=summary["id"], target=str(out))
    assert out.stat().st_size > 0
