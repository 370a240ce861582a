"""The ``--json`` shapes of the vSphere verbs (``backup vm``, ``restore vm``, ``restore disk``,
``restore vm --quick-rollback``)
documented in docs/cli.md under headings marked *(pinned, lab)* are what the verbs print on the
ESX lab: the top-level keys, and those of the first element of ``disks``, equal the documented
example's.  Adding a key means documenting it; removing one fails."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.restore.restore_helpers import run_cli
from tests.restore.test_restore_lab import destroy_vm
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
VERBS = ("backup vm", "restore vm", "restore disk", "restore vm --quick-rollback")


def documented() -> dict[str, Any]:
    found = re.findall(
        r"^### `vmkeep ([^`\n]+?) --json` \(pinned, lab\)\n.*?^```json\n(.*?)^```",
        DOC.read_text(), re.S | re.M,
    )
    return {verb: json.loads(example) for verb, example in found}


def test_the_vsphere_verbs_are_pinned() -> None:
    assert set(documented()) == set(VERBS)


@pytest.fixture(scope="module")
def outputs(esx_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    repo = tmp_path_factory.mktemp("json-lab") / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    conn = ["--vcenter", esx_lab.url, "--cafile", esx_lab.cafile, "--json"]
    saved = dict(os.environ)
    os.environ.update(VMKEEP_VC_USER=esx_lab.user, VMKEEP_VC_PASSWORD=esx_lab.password)
    name = "small06-json"
    out: dict[str, Any] = {}
    try:
        code, text, err = run_cli("backup", "vm", "small06", "--no-quiesce", *conn, repo=repo)
        assert code == 0, err
        out["backup vm"] = json.loads(text)
        point = out["backup vm"]["id"][:12]
        mount = f"nfs01={esx_lab.datastore_dir('nfs01')}"
        code, text, err = run_cli("restore", "vm", point, "--name", name, "--datastore", "nfs01",
                                  *conn, repo=repo)
        assert code == 0, err
        out["restore vm"] = json.loads(text)
        code, text, err = run_cli("restore", "disk", point, "--disk", "0", "--vm", name, *conn,
                                  repo=repo)
        assert code == 0, err
        out["restore disk"] = json.loads(text)
        code, text, err = run_cli("backup", "vm", name, "--no-quiesce", *conn, repo=repo)
        assert code == 0, err
        esx_lab.client.write(name, percent=4, disk=1, seed=3)  # the guest's writes since
        code, text, err = run_cli("restore", "vm", json.loads(text)["id"][:12],
                                  "--quick-rollback", "--datastore-mount", mount, *conn,
                                  repo=repo)
        assert code == 0, err
        out["restore vm --quick-rollback"] = json.loads(text)
        if os.environ.get("VMKEEP_PIN_DUMP"):
            Path(os.environ["VMKEEP_PIN_DUMP"]).write_text(json.dumps(out, indent=1))
        yield out
    finally:
        destroy_vm(esx_lab, name)
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize("verb", VERBS)
def test_json_keys_match_docs(outputs: dict[str, Any], verb: str) -> None:
    doc, got = documented()[verb], outputs[verb]
    assert sorted(got) == sorted(doc), f"vmkeep {verb} --json: top-level keys differ from docs"
    if "disks" in doc:
        assert got["disks"] and doc["disks"]
        assert sorted(got["disks"][0]) == sorted(doc["disks"][0]), f"{verb}: keys of disks[0]"
