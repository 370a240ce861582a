"""vSphere tags on the lab: a VM backup records the VM's tags (``meta.vm_tags``); a VM restore
attaches them only under the original name (Veeam: original location) or with ``--tags`` — a copy
carrying the backup policy tag would be picked up by the tag's jobs — and names the tags that no
longer exist; an account that may not attach tags gets the VM with a warning naming the
privilege."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_lab import destroy_vm
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.restore_vm import restore_vm
from vmkeep.flows.run import run_flow
from vmkeep.lab.access import OPERATOR_USER
from vmkeep.storage.repository import Repository
from vmkeep.vsphere import tagging
from vmkeep.vsphere.connection import connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.tls import TLSOptions

pytestmark = pytest.mark.lab
VM = "small05"  # backup-policy:gold


def _session(lab: Any) -> Any:
    return connect(lab.url, Credentials(lab.user, lab.password), TLSOptions(cafile=lab.cafile))


def _tags(lab: Any, name: str) -> list[str]:
    session = _session(lab)
    try:
        return tagging.tags_of_vm(session, find_vm(lab.connect(), name)._moId)
    finally:
        session.close()


def test_tags_are_recorded_and_restored_only_where_they_belong(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    summary = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    point = Repository.open(repo).load_point(summary["id"])
    assert point.meta["vm_tags"] == ["backup-policy:gold"]
    code, out, err = run_cli("ls", summary["id"][:12], "--json", repo=repo)
    assert code == 0 and json.loads(out)["vm"]["tags"] == ["backup-policy:gold"], err
    copy, tagged = f"{VM}-copy", f"{VM}-tagged"
    try:
        restored = run_flow(restore_vm, False, repo=repo, point=summary["id"], name=copy, **vc_env)
        assert restored["tags"] == [] and _tags(lab, copy) == []
        restored = run_flow(restore_vm, False, repo=repo, point=summary["id"], name=tagged,
                            restore_tags=True, **vc_env)
        assert restored["tags"] == ["backup-policy:gold"]
        assert _tags(lab, tagged) == ["backup-policy:gold"]
        moid = find_vm(lab.connect(), tagged)._moId
    finally:
        destroy_vm(lab, copy)
        destroy_vm(lab, tagged)
    session = _session(lab)
    try:  # a destroyed VM leaves its tags, as on vCenter (jobs selecting by tag never see it)
        assert moid not in tagging.vms_with_tag(session, "backup-policy:gold")
    finally:
        session.close()


def test_a_tag_that_no_longer_exists_is_named(lab: Any) -> None:
    session = _session(lab)
    try:
        moid = find_vm(lab.connect(), VM)._moId
        attached, missing = tagging.attach_tags(
            session, moid, ["backup-policy:gold", "backup-policy:retired"])
    finally:
        session.close()
    assert attached == ["backup-policy:gold"] and missing == ["backup-policy:retired"]


def test_without_the_attach_privilege_the_restored_vm_stands_with_a_warning(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remove_all_snapshots(find_vm(lab.connect(), VM))
    summary = run_flow(backup_vm, False, repo=repo, vm=VM, **vc_env)
    operator = next(u for u in lab.info.users if u["name"] == OPERATOR_USER)
    monkeypatch.setenv("VMKEEP_VC_USER", operator["name"])
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", operator["password"])
    name = f"{VM}-operator"
    try:
        restored = run_flow(restore_vm, False, repo=repo, point=summary["id"], name=name,
                            restore_tags=True, **vc_env)
        assert restored["tags"] == [] and _tags(lab, name) == []
        [warning] = [w for w in restored["warnings"] if "tags not attached" in w]
        assert "missing privilege InventoryService.Tagging.AttachTag" in warning, warning
    finally:
        destroy_vm(lab, name)


def test_a_many_vm_run_reads_every_vms_tags_in_one_vapi_session(
    lab: Any, vc_env: dict[str, Any], repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``backup vms`` reads the tags of all its VMs at its start (one vAPI login, one batched
    association query), not once per VM; each point still records its own VM's tags."""
    from vmkeep.flows.backup_vms import backup_vms

    logins: list[str] = []
    login = tagging.TaggingClient.login

    def counting(self: tagging.TaggingClient) -> None:
        logins.append(self.where)
        login(self)

    monkeypatch.setattr(tagging.TaggingClient, "login", counting)
    for name in ("small05", "small06", "small04"):
        remove_all_snapshots(find_vm(lab.connect(), name))
    summary = run_flow(backup_vms, False, repo=repo, names=["small05", "small06", "small04"],
                       quiesce=False, **vc_env)
    assert summary["failed"] == 0
    recorded = {r["vm"]: Repository.open(repo).load_point(r["id"]).meta["vm_tags"]
                for r in summary["vms"]}
    assert recorded == {"small05": ["backup-policy:gold"],
                        "small06": ["backup-policy:gold", "backup-policy:silver"],
                        "small04": []}
    assert len(logins) == 1, logins
