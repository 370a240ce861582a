"""Guest scripts in a run of several VMs on the lab: each VM gets the pre-freeze/post-thaw
commands its name, instanceUuid or first matching pattern names (``guest_scripts``), run in its
own guest through VMware Tools; VMs without scripts are snapshotted as before.  The post-backup
command runs once the restore point is committed, and never after a failed backup."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots
from tests.restore.restore_helpers import run_cli
from vmkeep.errors import VmkeepError
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.backup_vms import backup_vms
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
VMS = ("small01", "small03", "small04")


def _programs(lab: Any, vm: str) -> list[str]:
    return [str(p.get("path") or p.get("program") or p) for p in
            lab.client.guest_log(vm)["processes"] or []]


@pytest.fixture(autouse=True)
def _guest(lab: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMKEEP_GUEST_USER", "root")
    monkeypatch.setenv("VMKEEP_GUEST_PASSWORD", "secret")
    for name in VMS:
        remove_all_snapshots(find_vm(lab.connect(), name))


def test_each_vm_runs_the_scripts_its_name_or_pattern_names(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    before = {vm: len(_programs(lab, vm)) for vm in VMS}
    uuid = find_vm(lab.connect(), "small04").config.instanceUuid
    result = run_flow(
        backup_vms, False, repo=repo, names=list(VMS), **vc_env,
        guest_scripts={"small0[13]": {"pre_freeze": "/bin/sync"},
                       uuid: {"pre_freeze": "/bin/true", "post_thaw": "/bin/sync"}},
    )
    by_vm = {r["vm"]: r for r in result["vms"]}
    assert result["failed"] == 0
    for vm in VMS:
        assert by_vm[vm]["consistency"] == "application", by_vm[vm]["consistency_reason"]
    ran = {vm: _programs(lab, vm)[before[vm]:] for vm in VMS}
    assert [p for p in ran["small01"] if "sync" in p] and not [
        p for p in ran["small01"] if "/bin/true" in p]
    assert [p for p in ran["small04"] if "/bin/true" in p]
    assert [p for p in ran["small04"] if "sync" in p]  # its post-thaw


def test_the_command_line_runs_the_scripts_in_every_guest(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    before = {vm: len(_programs(lab, vm)) for vm in VMS[:2]}
    code, _out, err = run_cli("backup", "vm", *VMS[:2], "--pre-freeze", "/bin/sync",
                              "--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"],
                              repo=repo)
    assert code == 0, err
    for vm in VMS[:2]:
        assert [p for p in _programs(lab, vm)[before[vm]:] if "sync" in p], vm


def test_the_post_backup_script_runs_only_once_the_point_is_committed(
    lab: Any, vc_env: dict[str, Any], repo: str
) -> None:
    vm, script = VMS[0], "/usr/local/sbin/truncate-logs"

    def truncations() -> int:
        return len([p for p in _programs(lab, vm) if script in p])

    before = truncations()
    summary = run_flow(backup_vm, False, repo=repo, vm=vm, post_backup=script, **vc_env)
    assert summary["id"] and truncations() == before + 1
    assert not [w for w in summary["warnings"] if "post-backup" in w]

    with lab.fault("guest_program", script, count=0):  # it fails: a warning, the point stands
        failed = run_flow(backup_vm, False, repo=repo, vm=vm, post_backup=script, **vc_env)
    assert failed["id"] in {p.id for p in Repository.open(repo).list_points()}
    assert [w for w in failed["warnings"] if w.startswith("post-backup script failed")]

    # a crash-consistent point: not run (the logs may be all a database could recover from)
    crash = run_flow(backup_vm, False, repo=repo, vm=vm, post_backup=script, quiesce=False,
                     **vc_env)
    assert [w for w in crash["warnings"] if w.startswith(
        "post-backup script not run: the restore point is only crash-consistent")]
    assert truncations() == before + 2

    # no point, no truncation: a backup that fails never runs it
    with (lab.fault("soap_fault", "CreateSnapshot_Task", count=0, message="refused by the test"),
          pytest.raises(VmkeepError)):
        run_flow(backup_vm, False, repo=repo, vm=vm, post_backup=script, **vc_env)
    assert truncations() == before + 2

    # several VMs: per VM from guest_scripts, and from the command line in every guest
    code, _out, err = run_cli("backup", "vm", *VMS[:2], "--post-backup", script,
                              "--vcenter", vc_env["vcenter"], "--cafile", vc_env["cafile"],
                              repo=repo)
    assert code == 0, err
    assert truncations() == before + 3
    assert [p for p in _programs(lab, VMS[1]) if script in p]
