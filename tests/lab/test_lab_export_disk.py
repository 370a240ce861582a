"""``vmkeep lab export-disk``: the lab's own view of a disk, now or as of a snapshot."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.lab.lab_helpers import find_vm, remove_all_snapshots, sha, snapshot

pytestmark = pytest.mark.lab

VM = "small01"  # takes random writes


def _export(esx_lab, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VMKEEP_LAB_DIR=str(esx_lab.state_dir))
    return subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "lab", "export-disk", *args],
        env=env,
        capture_output=True,
        text=True,
    )


def test_export_disk_now_and_as_of_a_snapshot(esx_lab, si, tmp_path):
    vm = find_vm(si, VM)
    remove_all_snapshots(vm)
    try:
        before = esx_lab.read_disk(VM, 0)
        snapshot(vm, "export-1")
        esx_lab.write(VM, 10, seed=41)
        now = esx_lab.read_disk(VM, 0)
        assert sha(now) != sha(before)
        [vm_doc] = [v for v in esx_lab.client.status()["vms"] if v["name"] == VM]
        chain = vm_doc["chains"][0]["chain"]
        assert [x.get("format") for x in chain] == [None, "vmfsSparse"]  # small01: VMFS5

        r = _export(esx_lab, VM, "--disk", "0", "--to", str(tmp_path / "now.raw"))
        assert r.returncode == 0, r.stderr
        assert sha((tmp_path / "now.raw").read_bytes()) == sha(now)

        r = _export(
            esx_lab, VM, "--snapshot", "export-1", "--to", str(tmp_path / "s.raw"), "--json"
        )
        assert r.returncode == 0, r.stderr
        assert sha((tmp_path / "s.raw").read_bytes()) == sha(before)
        # sparse output: holes where the disk reads zeros
        st = os.stat(tmp_path / "s.raw")
        assert st.st_size == len(before) and st.st_blocks * 512 <= st.st_size
    finally:
        remove_all_snapshots(vm)


@pytest.mark.parametrize(
    "args, message",
    [
        (["nosuchvm"], "no such VM"),
        ([VM, "--disk", "7"], "has no disk 7"),
        ([VM, "--snapshot", "nope"], "no such snapshot"),
    ],
)
def test_export_disk_bad_input_is_a_clear_error(esx_lab, tmp_path, args, message):
    r = _export(esx_lab, *args, "--to", str(tmp_path / "x.raw"))
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr


def _cli(esx_lab, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VMKEEP_LAB_DIR=str(esx_lab.state_dir))
    return subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "lab", *args], env=env, capture_output=True, text=True
    )


def test_lab_write_trim_from_the_cli(esx_lab, tmp_path):
    esx_lab.write(VM, at=(1 << 20, 64 * 1024))
    assert esx_lab.read_disk(VM, 0, offset=1 << 20, length=64 * 1024) != bytes(64 * 1024)
    r = _cli(
        esx_lab, "write", VM, "--offset", str(1 << 20), "--length", "65536", "--trim", "--json"
    )
    assert r.returncode == 0, r.stderr
    assert '"trim": true' in r.stdout
    assert esx_lab.read_disk(VM, 0, offset=1 << 20, length=64 * 1024) == bytes(64 * 1024)
    r = _cli(esx_lab, "write", VM, "--trim")
    assert r.returncode != 0 and "--percent" in r.stderr and "Traceback" not in r.stderr
