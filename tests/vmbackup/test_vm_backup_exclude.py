"""Exclusions on the lab: VMs a pattern selects but ``exclude`` names (name, instanceUuid or glob)
are never backed up, are logged and reported, and are not failures; excluding everything
selected is a clear error."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm
from tests.restore.restore_helpers import run_cli
from vmkeep.flows.backup_vms import NothingSelected, backup_vms
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab


def _small_vms(lab: Any) -> list[str]:
    return sorted(v["name"] for v in lab.vms if v["name"].startswith("small0"))


def test_excluded_vms_are_left_out_and_reported(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    small = _small_vms(lab)
    assert len(small) >= 3
    uuid = find_vm(lab.connect(), small[1]).config.instanceUuid
    result = run_flow(backup_vms, False, repo=repo, patterns=["small0*"], names=[small[0]],
                      exclude=[small[0], uuid, "small0[4-9]"], **vc_env)
    kept = [small[2]]  # small03
    assert sorted(r["vm"] for r in result["vms"]) == kept
    assert result["failed"] == 0  # a VM named and excluded is excluded, not missing
    assert sorted(result["excluded"]) == sorted(set(small) - set(kept))
    assert sorted(p.meta["vm_name"] for p in Repository.open(repo).list_points()) == kept


def test_excluding_everything_selected_is_a_clear_error(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    with pytest.raises(NothingSelected) as caught:
        run_flow(backup_vms, False, repo=repo, patterns=["small0*"], exclude=["small*"],
                 **vc_env)
    assert "exclude=['small*']" in caught.value.get_message()
    code, _out, err = run_cli("backup", "vm", "small01", "--exclude", "small01", "--vcenter",
                              vc_env["vcenter"], "--cafile", vc_env["cafile"], repo=repo)
    assert code == 14 and "Traceback" not in err
    assert Repository.open(repo).list_points() == []
