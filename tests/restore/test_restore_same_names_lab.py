"""Two VMs of one name in two folders, as vSphere allows: restores and lookups pick the right one.

vSphere keeps VM names unique per folder only, so ``/DC1/vm/teamA/twin`` and
``/DC1/vm/teamB/twin`` can both exist (the lab refuses a second ``twin`` in the same folder, as
vSphere does: ``tests/lab/test_lab_names.py``).  A point of teamA's ``twin`` is restored:

- by default into the folder it was backed up from (teamA), or the root VM folder with a
  warning when that folder is gone;
- without ``--overwrite``, refused where the name is taken (teamA), allowed into a folder where it
  is free (teamC) with a warning naming the other folders' VMs of the name;
- with ``--overwrite``, replacing the ``twin`` of the target folder and never teamB's; when the
  target folder holds none and two other folders do, refused before anything changes; killed
  mid-way, put back by the sweep though teamB's ``twin`` holds the name;
- a backup naming ``twin`` says which VMs the name means, and asks for the instance UUID; a
  selection takes both, ``forget``'s keep rules keep what they promise each of them, and
  ``list`` shows each point's folder beside the shared name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.restore import test_restore_nfc_lab as nfc
from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_nfc_lab import make_source_vm
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository
from vmkeep.vsphere.errors import AmbiguousVM

pytestmark = pytest.mark.lab
NAME = "twin"
ASIDE_KEY = "vmkeep.restore.replacing"
lab_env = nfc.lab_env  # vCenter credentials in the environment only


class Inventory:
    """A pyVmomi session on the lab, for looking at (and cleaning up) the twins."""

    def __init__(self, esx_lab: Any) -> None:
        from tests.lab.lab_helpers import lab_datacenter

        self.si = esx_lab.connect()
        self.dc = lab_datacenter(self.si)

    def folder(self, name: str) -> Any:
        found = next((f for f in self.dc.vmFolder.childEntity if f.name == name), None)
        return found or self.dc.vmFolder.CreateFolder(name)

    def vms(self, name: str = NAME) -> dict[str, Any]:
        """The VMs called ``name``, by the name of their folder."""
        from pyVmomi import vim

        view = self.si.content.viewManager.CreateContainerView(
            self.si.content.rootFolder, [vim.VirtualMachine], True)
        try:
            return {v.parent.name: v for v in view.view if v.name == name}
        finally:
            view.DestroyView()

    def destroy(self, vm: Any) -> None:
        from pyVim.task import WaitForTask

        if vm.runtime.powerState == "poweredOn":
            WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.Destroy_Task())

    def move(self, name: str, into: str) -> None:
        from pyVim.task import WaitForTask

        WaitForTask(self.folder(into).MoveIntoFolder_Task([self.vms(name)["vm"]]))


def _state(vm: Any) -> tuple[str, str, str, str, dict[str, str]]:
    marks = {o.key: o.value for o in vm.config.extraConfig or [] if o.key.startswith("vmkeep.")}
    return (vm._moId, vm.name, vm.config.instanceUuid, str(vm.runtime.powerState), marks)


@pytest.fixture(scope="module")
def twins(
    esx_lab: Any, lab_env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """teamA's ``twin`` backed up (point ``id``), then teamB's ``twin`` made and powered on."""
    from pyVim.task import WaitForTask

    inv = Inventory(esx_lab)
    make_source_vm(esx_lab, NAME, esx_lab.hosts[0]["name"], "datastore1")
    inv.move(NAME, "teamA")
    repo = tmp_path_factory.mktemp("twins") / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    try:
        summary = run_flow(backup_vm, False, repo=str(repo), vm=NAME, quiesce=False, **lab_env)
        make_source_vm(esx_lab, NAME, esx_lab.hosts[1]["name"], "datastore2")
        inv.move(NAME, "teamB")
        WaitForTask(inv.vms()["teamB"].PowerOnVM_Task())
        inv.folder("teamC")
        yield {"repo": str(repo), "id": summary["id"], "inv": inv}
    finally:
        for name in (NAME, "twin-moved"):
            for vm in inv.vms(name).values():
                inv.destroy(vm)
        for folder in list(inv.dc.vmFolder.childEntity):
            if folder.name in ("teamA", "teamB", "teamC", "teamA-renamed"):
                WaitForTask(folder.Destroy_Task())


def _restore(lab_env: dict[str, Any], twins: dict[str, Any], *args: str) -> tuple[int, str, str]:
    return run_cli("restore", "vm", twins["id"][:12], "--datastore", "datastore2", *args,
                   "--vcenter", lab_env["vcenter"], "--cafile", lab_env["cafile"], "--json",
                   repo=twins["repo"])


def test_a_backup_naming_the_twins_says_which_vms_the_name_means(lab_env, twins) -> None:
    with pytest.raises(AmbiguousVM) as refused:
        run_flow(backup_vm, False, repo=twins["repo"], vm=NAME, quiesce=False, **lab_env)
    message = refused.value.get_message()
    assert ("2 VMs are named 'twin' (in /DC1/vm/teamA, /DC1/vm/teamB): give the one you mean "
            "by its instance UUID") in message, message
    # by instance UUID: the one meant
    uuid = twins["inv"].vms()["teamB"].config.instanceUuid
    again = run_flow(backup_vm, False, repo=twins["repo"], vm=uuid, quiesce=False, **lab_env)
    assert again["instance_uuid"] == uuid


def test_the_name_taken_in_its_folder_is_refused_and_nothing_changes(lab_env, twins) -> None:
    before = {f: _state(vm) for f, vm in twins["inv"].vms().items()}

    code, _, err = _restore(lab_env, twins)  # the original name, into teamA (its folder)

    assert code == 16 and "A VM named 'twin' already exists" in err and "--overwrite" in err, err
    assert {f: _state(vm) for f, vm in twins["inv"].vms().items()} == before


def test_an_overwrite_into_a_folder_holding_no_twin_is_refused_when_two_others_do(
    lab_env, twins
) -> None:
    before = {f: _state(vm) for f, vm in twins["inv"].vms().items()}

    code, _, err = _restore(lab_env, twins, "--overwrite", "--folder", "teamC")

    assert code == 16, err
    assert ("2 VMs are named 'twin' (in /DC1/vm/teamA, /DC1/vm/teamB): none in the target "
            "folder /DC1/vm/teamC: give --folder with the folder of the one to replace") in err
    assert {f: _state(vm) for f, vm in twins["inv"].vms().items()} == before


def test_a_folder_where_the_name_is_free_takes_the_restore_with_a_warning(lab_env, twins) -> None:
    before = {f: _state(vm) for f, vm in twins["inv"].vms().items()}

    code, out, err = _restore(lab_env, twins, "--folder", "teamC")

    assert code == 0, err
    summary = json.loads(out)
    assert summary["folder"] == "/DC1/vm/teamC"
    assert ("2 other VMs named 'twin' exist (in /DC1/vm/teamA, /DC1/vm/teamB): VM names are "
            "unique per folder only — a backup selecting this name takes them all, a command "
            "naming one VM needs its instance UUID") in summary["warnings"]
    now = twins["inv"].vms()
    assert set(now) == {"teamA", "teamB", "teamC"}
    assert {f: _state(now[f]) for f in before} == before
    twins["inv"].destroy(now["teamC"])


def test_a_restore_goes_back_into_its_folder_or_the_root_when_that_is_gone(
    esx_lab, lab_env, twins
) -> None:
    from pyVim.task import WaitForTask

    inv = twins["inv"]
    code, out, err = _restore(lab_env, twins, "--name", "twin-moved")
    assert code == 0, err
    assert json.loads(out)["folder"] == "/DC1/vm/teamA"
    assert set(inv.vms("twin-moved")) == {"teamA"}
    inv.destroy(inv.vms("twin-moved")["teamA"])

    team_a = inv.folder("teamA")
    WaitForTask(team_a.Rename_Task("teamA-renamed"))
    try:
        code, out, err = _restore(lab_env, twins, "--name", "twin-moved")
    finally:
        WaitForTask(team_a.Rename_Task("teamA"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["folder"] == "/DC1/vm"
    assert ("the VM's folder /DC1/vm/teamA does not exist in the target datacenter: restored "
            "into its root VM folder (--folder chooses another)") in summary["warnings"]
    assert set(inv.vms("twin-moved")) == {"vm"}
    inv.destroy(inv.vms("twin-moved")["vm"])


def test_a_killed_overwrite_is_put_back_by_the_sweep_though_another_folder_has_the_name(
    lab_env, twins, tmp_path: Path
) -> None:
    inv = twins["inv"]
    before = {f: _state(vm) for f, vm in inv.vms().items()}
    nfc._kill_mid_restore(lab_env, twins, tmp_path, NAME, "--overwrite", "--transport", "https",
                          at="restore-piece:20")
    assert set(inv.vms()) == {"teamA", "teamB"}  # teamA: the half-restored new twin
    assert any(vm.name.startswith("twin (vmkeep: being replaced")
               for vm in inv.folder("teamA").childEntity)

    code, result = nfc._sweep(lab_env)

    assert code == 0, result
    assert "twin: half-restored VM" in result["removed"]
    assert result["put_back"] == ["twin: VM set aside by a restore that did not finish"]
    assert {f: _state(vm) for f, vm in inv.vms().items()} == before


def test_an_overwrite_replaces_the_twin_of_its_folder_and_never_the_other(lab_env, twins) -> None:
    inv = twins["inv"]
    team_a, team_b = _state(inv.vms()["teamA"]), _state(inv.vms()["teamB"])

    code, out, err = _restore(lab_env, twins, "--overwrite")

    assert code == 0, err
    summary = json.loads(out)
    assert summary["folder"] == "/DC1/vm/teamA"
    now = inv.vms()
    assert set(now) == {"teamA", "teamB"}
    assert _state(now["teamB"]) == team_b  # untouched: same VM, name, power, no marks
    assert now["teamA"]._moId != team_a[0]  # the old teamA twin is gone, a new one stands
    assert _state(now["teamA"])[4] == {}  # the new one carries no restore marks


def test_forget_keeps_what_its_rules_promise_each_vm_of_the_name(lab_env, twins) -> None:
    """A selection (a pattern: ``twi[n]``) takes both VMs of the name; their points share the
    name, and ``forget --keep-last 1`` keeps the newest point of each VM (grouped by instance
    UUID), not one point between them.  One plain name is one VM: refused as ambiguous."""
    code, _, err = run_cli("backup", "vm", NAME, "--vcenter", lab_env["vcenter"], "--cafile",
                           lab_env["cafile"], repo=twins["repo"])
    assert code == 16 and "2 VMs are named 'twin'" in err, err
    code, out, err = run_cli("backup", "vm", "twi[n]", "--vcenter", lab_env["vcenter"], "--cafile",
                             lab_env["cafile"], "--json", repo=twins["repo"])
    assert code == 0, err
    uuids = {f: vm.config.instanceUuid for f, vm in twins["inv"].vms().items()}
    repo = Repository.open(twins["repo"])
    by_vm: dict[str, list[str]] = {}
    for p in repo.list_points(NAME):  # oldest first
        by_vm.setdefault(p.meta["instance_uuid"], []).append(p.id)
    assert set(uuids.values()) <= set(by_vm)  # both twins backed up just now

    code, out, err = run_cli("forget", "--keep-last", "1", "--json", repo=twins["repo"])

    assert code == 0, err
    kept = {p["id"] for p in json.loads(out)["kept"]}
    assert kept == {ids[-1] for ids in by_vm.values()}  # the newest of every VM, each


def test_list_shows_the_folder_beside_a_name_several_vms_carry(twins) -> None:
    code, out, err = run_cli("list", repo=twins["repo"])
    assert code == 0, err
    rows = [line for line in out.splitlines() if " vm " in f" {line} "]
    assert rows and all("twin (/DC1/vm/team" in row for row in rows), out
    assert any("twin (/DC1/vm/teamB)" in row for row in rows), out
