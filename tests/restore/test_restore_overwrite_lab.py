"""``restore vm --overwrite`` on the ESX lab: the VM it replaces is never lost.

The old VM is set aside (marked, powered off, renamed) while its replacement is restored and
destroyed only once that is complete; a restore that fails — here on a damaged repository —
puts it back under its name, running again; a restore killed -9 mid-upload leaves it aside, and
the sweep puts it back once it has removed the half-restored new VM.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.restore import test_restore_nfc_lab as nfc
from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_lab import destroy_vm
from tests.restore.test_restore_nfc_lab import (
    _kill_mid_restore,
    _sweep,
    _vm_names,
    _vm_ref,
    make_source_vm,
)
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
SRC = "ovsrc"
ASIDE_KEY = "vmkeep.restore.replacing"
lab_env = nfc.lab_env  # the same fixture: vCenter credentials in the environment only


@pytest.fixture(scope="module")
def point(
    esx_lab: Any, lab_env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    make_source_vm(esx_lab, SRC, esx_lab.hosts[0]["name"], "datastore1")
    repo = tmp_path_factory.mktemp("overwrite") / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    try:
        summary = run_flow(backup_vm, False, repo=str(repo), vm=SRC, quiesce=False, **lab_env)
        yield {"repo": str(repo), "id": summary["id"]}
    finally:
        destroy_vm(esx_lab, SRC)


@pytest.fixture
def target(esx_lab: Any) -> Iterator[str]:
    """A running VM of its own content (not the point's), to be replaced."""
    from pyVim.connect import Disconnect
    from pyVim.task import WaitForTask

    name = "ovtarget"
    make_source_vm(esx_lab, name, esx_lab.hosts[1]["name"], "datastore2")
    esx_lab.write(name, at=(0, 1 << 20), seed=99)
    si = esx_lab.connect()
    try:
        WaitForTask(_vm_ref(si, name).PowerOnVM_Task())
    finally:
        Disconnect(si)
    try:
        yield name
    finally:
        destroy_vm(esx_lab, name)


def _state(esx_lab: Any, name: str) -> tuple[str, dict[str, str]]:
    """(power state, vmkeep's extraConfig keys) of the VM ``name``."""
    from pyVim.connect import Disconnect

    si = esx_lab.connect()
    try:
        vm = _vm_ref(si, name)
        extra = {o.key: o.value for o in vm.config.extraConfig if o.key.startswith("vmkeep.")}
        return str(vm.runtime.powerState), extra
    finally:
        Disconnect(si)


def _restore(lab_env: dict[str, Any], repo: str, point: str, name: str,
             *args: str) -> tuple[int, str, str]:
    return run_cli("restore", "vm", point[:12], "--name", name, "--datastore", "datastore2",
                   "--overwrite", *args, "--vcenter", lab_env["vcenter"], "--cafile",
                   lab_env["cafile"], "--json", repo=repo)


def test_a_failed_overwrite_puts_the_old_vm_back_running(esx_lab, lab_env, point, target,
                                                          tmp_path: Path):
    damaged = tmp_path / "damaged"
    shutil.copytree(point["repo"], damaged)
    for pack in (damaged / "packs").rglob("*"):
        if pack.is_file() and pack.stat().st_size > 4096:
            data = bytearray(pack.read_bytes())
            for i in range(64, len(data) // 2, 509):
                data[i] ^= 0xFF
            pack.write_bytes(bytes(data))
    names, disk = _vm_names(esx_lab), esx_lab.read_disk(target, 0)

    code, _, err = _restore(lab_env, str(damaged), point["id"], target, "--power-on")

    assert code == 13 and "fails its hash check" in err, err
    assert "Traceback" not in err
    assert _vm_names(esx_lab) == names  # no half-restored VM, no VM left aside
    assert _state(esx_lab, target) == ("poweredOn", {})  # running again, unmarked
    assert esx_lab.read_disk(target, 0) == disk  # its own disk, untouched


def test_an_overwrite_replaces_the_vm_only_once_the_new_one_is_complete(
    esx_lab, lab_env, point, target
):
    names = _vm_names(esx_lab)
    code, out, err = _restore(lab_env, point["repo"], point["id"], target, "--power-on",
                              "--transport", "https")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["power_state"] == "poweredOn" and summary["warnings"] == []
    assert _vm_names(esx_lab) == names  # the old one destroyed, nothing left aside
    assert _state(esx_lab, target) == ("poweredOn", {})
    assert esx_lab.read_disk(target, 0) == esx_lab.read_disk(SRC, 0)
    # the old VM's destruction took only its own files: the new VM backs up
    again = run_flow(backup_vm, False, repo=point["repo"], vm=target, quiesce=False, **lab_env)
    assert again["snapshot_removed"] and len(again["disks"]) == 1


def test_a_killed_overwrite_leaves_the_old_vm_aside_and_the_sweep_puts_it_back(
    esx_lab, lab_env, point, target, tmp_path: Path
):
    names, disk = _vm_names(esx_lab), esx_lab.read_disk(target, 0)
    source = {"repo": point["repo"], "id": point["id"]}
    _kill_mid_restore(lab_env, source, tmp_path, target, "--overwrite", "--transport", "https",
                      at="restore-piece:20")
    now = _vm_names(esx_lab)
    [aside] = now - names
    assert aside.startswith(f"{target} (vmkeep: being replaced") and target in now
    power, marks = _state(esx_lab, aside)
    assert power == "poweredOff" and marks[ASIDE_KEY].endswith(f";1;{target}")

    code, result = _sweep(lab_env)

    assert code == 0, result
    assert f"{target}: half-restored VM" in result["removed"]
    assert result["put_back"] == [f"{target}: VM set aside by a restore that did not finish"]
    assert _vm_names(esx_lab) == names
    assert _state(esx_lab, target) == ("poweredOn", {})
    assert esx_lab.read_disk(target, 0) == disk
    # nothing left for a second sweep
    code, result = _sweep(lab_env)
    assert code == 0 and result["put_back"] == []


def test_a_target_that_does_not_exist_is_refused_before_the_vm_is_touched(
    esx_lab, lab_env, point, target
):
    names = _vm_names(esx_lab)
    code, _, err = _restore(lab_env, point["repo"], point["id"], target, "--host", "no-such-host")
    assert code == 16 and "host 'no-such-host'" in err, err
    code, _, err = run_cli("restore", "vm", point["id"][:12], "--name", target, "--datastore",
                           "no-such-ds", "--overwrite", "--vcenter", lab_env["vcenter"],
                           "--cafile", lab_env["cafile"], repo=point["repo"])
    assert code == 16 and "datastore 'no-such-ds'" in err, err
    assert _vm_names(esx_lab) == names
    assert _state(esx_lab, target) == ("poweredOn", {})


def test_a_vm_whose_host_is_disconnected_is_not_touched_and_the_error_says_what_to_do(
    esx_lab, lab_env, point, target
):
    """vSphere can neither mark, stop nor rename a VM on a disconnected host: ``--overwrite``
    refuses before anything changes, naming the state and the ways out (another name; remove the
    VM from the inventory) — and the restore under another name works meanwhile."""
    names = _vm_names(esx_lab)
    host = esx_lab.hosts[1]["name"]  # the target's
    esx_lab.client.add_fault("host_disconnect", target=host, count=0)
    try:
        code, _, err = _restore(lab_env, point["repo"], point["id"], target,
                                "--host", esx_lab.hosts[0]["name"])
        assert code == 16, err
        assert (f"{target} cannot be replaced in place: vSphere reports it disconnected" in err
                and "--name" in err and "remove it from the inventory" in err), err
        assert _vm_names(esx_lab) == names
    finally:
        esx_lab.client.clear_faults("host_disconnect")
    assert _state(esx_lab, target) == ("poweredOn", {})
