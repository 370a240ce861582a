"""A backup account without the role's privileges (the lab's restricted user) fails with a
message naming the missing privilege — not a login error, not a traceback — and leaves no
snapshot and no restore point.  So does a host with a free ESXi licence (the lab's
``free_licence`` fault: every API write refused with RestrictedVersion)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env
from tests.vmbackup.vmbackup_helpers import vmkeep_snapshots
from vmkeep.lab.access import RESTRICTED_USER
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import inventory
from vmkeep.vsphere.connection import connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import PermissionDenied
from vmkeep.vsphere.tls import TLSOptions

pytestmark = pytest.mark.lab


def _restricted(lab: Any) -> dict[str, Any]:
    return next(u for u in lab.info.users if u["name"] == RESTRICTED_USER)


def test_backup_as_the_restricted_user_names_datastore_browse(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    u = _restricted(lab)
    monkeypatch.setenv("VMKEEP_VC_USER", u["name"])
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", u["password"])
    out = subprocess.run(
        [*VMKEEP, "backup", "vm", "small05", "--vcenter", vc_env["vcenter"], "--cafile",
         vc_env["cafile"], "--json", "--no-prefect"],
        env=cli_env(PREFECT_API_URL="", VMKEEP_REPO=repo), capture_output=True, text=True,
    )
    assert out.returncode == 16, out.stdout + out.stderr
    assert "lacks the privilege Datastore.Browse" in out.stderr
    assert "lists every missing privilege" in out.stderr  # the whole message, one line
    assert "refused (wrong user name" not in out.stderr and "Traceback" not in out.stderr
    assert u["password"] not in out.stdout + out.stderr
    assert Repository.open(repo).list_points() == []
    assert not vmkeep_snapshots(lab)


def test_changed_block_queries_name_disk_random_read(lab: Any) -> None:
    u = _restricted(lab)
    with connect(lab.url, Credentials(u["name"], u["password"]),
                 TLSOptions(cafile=lab.cafile)) as s:
        vm = next(v for v in inventory.list_vms(s) if v.name == "small05")
        with pytest.raises(PermissionDenied) as caught:
            s.call(vm.ref.QueryChangedDiskAreas, None, vm.disks[0].key, 0, "*",
                   what="QueryChangedDiskAreas")
    msg = caught.value.get_message()
    assert "VirtualMachine.Provisioning.DiskRandomRead" in msg and vm.moid in msg
    assert f"on VirtualMachine 'small05' ({vm.moid})" in msg  # named, not only its moref


def test_a_free_esxi_licence_is_named_not_a_traceback(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    """Free ESXi answers every API write — the backup's snapshot first — with RestrictedVersion:
    the backup fails at once with vSphere's exit code and a message that says what to buy."""
    with lab.fault("free_licence", count=0):
        out = subprocess.run(
            [*VMKEEP, "backup", "vm", "small05", "--vcenter", vc_env["vcenter"], "--cafile",
             vc_env["cafile"], "--json", "--no-prefect"],
            env=cli_env(PREFECT_API_URL="", VMKEEP_REPO=repo), capture_output=True, text=True,
        )
    assert out.returncode == 16, out.stdout + out.stderr
    assert "licence prohibits it" in out.stderr and "free ESXi licence" in out.stderr
    assert "Traceback" not in out.stderr
    assert Repository.open(repo).list_points() == []
    assert not vmkeep_snapshots(lab)
