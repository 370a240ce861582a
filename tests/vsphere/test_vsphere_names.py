"""VM names with ``/``, ``\\`` and ``%``: vSphere's API escapes them, vmkeep shows and takes the
plain name (the one the vSphere Client shows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_lab import destroy_vm
from vmkeep.vsphere.names import vm_name

PLAIN = "sql/prod 100% a\\b"
ESCAPED = "sql%2fprod 100%25 a%5cb"


def test_the_api_escapes_are_undone() -> None:
    assert vm_name(ESCAPED) == PLAIN
    assert vm_name("sql%2Fprod %5C %41") == "sql/prod \\ %41"  # only vSphere's three escapes
    assert vm_name("plain") == "plain"


@pytest.mark.lab
def test_a_vm_named_with_escaped_characters_is_backed_up_and_restored_by_its_plain_name(
    esx_lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    import vmkeep.licensing.store as store
    from tests.restore.test_restore_lab import DEV_KEYS

    monkeypatch.setenv("VMKEEP_VC_USER", esx_lab.user)
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", esx_lab.password)
    monkeypatch.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (DEV_KEYS / "dev_public.pem").read_bytes())
    monkeypatch.setenv("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
    vc = ["--vcenter", esx_lab.url, "--cafile", str(esx_lab.cafile)]
    repo = tmp_path / "repo"
    assert run_cli("init", repo=repo)[0] == 0
    code, out, err = run_cli("backup", "vm", "small04", "--no-quiesce", "--json", *vc, repo=repo)
    assert code == 0, err
    try:
        code, _, err = run_cli("restore", "vm", json.loads(out)["id"][:12], "--name", PLAIN,
                               "--datastore", "datastore2", *vc, repo=repo)
        assert code == 0, err
        si = esx_lab.connect()
        try:
            view = si.content.viewManager.CreateContainerView(
                si.content.rootFolder, [vim.VirtualMachine], True)
            assert ESCAPED in {v.name for v in view.view}  # what vSphere's API answers
        finally:
            Disconnect(si)
        code, out, err = run_cli("backup", "vm", PLAIN, "--no-quiesce", "--json", *vc, repo=repo)
        assert code == 0, err
        assert json.loads(out)["vm"] == PLAIN
        code, out, err = run_cli("backup", "vm", "sql/*", "small04", "--no-quiesce", "--json",
                                 *vc, repo=repo)
        assert code == 0, err
        assert {r["vm"] for r in json.loads(out)} == {PLAIN, "small04"}
        listed = json.loads(run_cli("list", "--json", repo=repo)[1])["points"]
        assert {p["name"] for p in listed} == {PLAIN, "small04"}
        code, _, err = run_cli("ls", f"{PLAIN}@latest", repo=repo)
        assert code == 0, err
    finally:
        destroy_vm(esx_lab, ESCAPED)  # (pyVmomi's own name: the escaped one)
