"""The ``--json`` shapes documented in docs/cli.md are what the verbs print (top-level keys), and
docs/cli.md's generated reference matches the CLI's own help.

Every verb whose heading in docs/cli.md says *(pinned)* runs here against a small local
repository (an ext4 image point and a file point; no lab), and its top-level keys — and those of
the first element of its main list — must equal the documented example's.  Adding a key means
documenting it; removing one fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.docs.small_repo import SmallRepo, build

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cli.md"


#: the list whose first element is pinned too
MAIN_LIST = {
    "list": "points",
    "ls POINT": "volumes",
    "ls POINT:VOLUME/PATH": "entries",
    "forget": "kept",
    "stats": "per_point",
    "verify fs": "volumes",
    "copy": "copied",
    "protect": "protected",
}


def documented() -> dict[str, Any]:
    """Heading (``list``, ``ls POINT`` …) → the parsed example of every *pinned* verb."""
    text = DOC.read_text()
    found = re.findall(
        r"^### `vmkeep ([^`\n]+?) --json` \(pinned\)\n\n```json\n(.*?)^```", text, re.S | re.M
    )
    assert found, "no pinned --json examples in docs/cli.md"
    return {verb: json.loads(example) for verb, example in found}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What each pinned verb prints with ``--json``."""
    base = tmp_path_factory.mktemp("json")
    repo: SmallRepo = build(base / "r", encrypted=False)
    out: dict[str, Any] = {}
    run = repo.run
    out["init"] = run("init", "--repo", str(base / "other"), "--json")
    out["backup image"] = run("backup", "image", str(repo.image), "--name", "img", "--json")
    out["backup files"] = run("backup", "files", str(repo.source), "--name", "files", "--json")
    out["protect"] = run("protect", "img@latest", "--note", "before the ERP upgrade", "--json")
    out["list"] = run("list", "--json")
    out["copy"] = run("copy", "--repo", str(base / "other"), "--from-repo", str(repo.root),
                      "--json")
    out["ls POINT"] = run("ls", "img@latest", "--json")
    out["ls POINT:VOLUME/PATH"] = run("ls", "img@latest:whole/", "--json")
    out["restore image"] = run(
        "restore", "image", "img@latest", "--to", str(base / "d.raw"), "--json"
    )
    out["restore files"] = run(
        "restore", "files", "files@latest:/", "--to", str(base / "f"), "--json"
    )
    out["check"] = run("check", "--json")
    out["verify fs"] = run("verify", "fs", "img@latest", "--json")
    out["stats"] = run("stats", "--json")
    out["forget"] = run("forget", "--keep-last", "1", "--json")
    out["prune"] = run("prune", "--json")
    return out


def test_every_main_verb_is_pinned() -> None:
    assert set(documented()) == {
        "init",
        "backup image",
        "backup files",
        "list",
        "ls POINT",
        "ls POINT:VOLUME/PATH",
        "restore image",
        "restore files",
        "check",
        "verify fs",
        "stats",
        "forget",
        "prune",
        "copy",
        "protect",
    }


@pytest.mark.parametrize("verb", sorted(documented()), ids=str)
def test_json_keys_match_docs(outputs: dict[str, Any], verb: str) -> None:
    doc, got = documented()[verb], outputs[verb]
    assert isinstance(got, dict), f"vmkeep {verb} --json printed {type(got).__name__}"
    assert sorted(got) == sorted(doc), f"vmkeep {verb} --json: top-level keys differ from docs"
    key = MAIN_LIST.get(verb)
    if key:
        assert got[key] and doc[key], f"{verb}: {key} empty"
        assert sorted(got[key][0]) == sorted(doc[key][0]), f"{verb}: keys of {key}[0] differ"


def test_cli_reference_is_current() -> None:
    """docs/cli.md's generated part is what ``python -m vmkeep.cli.gendoc`` writes now."""
    from vmkeep.cli.gendoc import render

    current = DOC.read_text()
    assert render(current) == current, "docs/cli.md is out of date: python -m vmkeep.cli.gendoc"


def test_cli_reference_does_not_depend_on_import_order() -> None:
    """A process that ran a verb first (its module registered first) renders the same help."""
    code = (
        "import sys, vmkeep.cli.main\n"
        "import vmkeep.cli.tape, vmkeep.cli.instant_restore, vmkeep.cli.restore_disk\n"
        "from vmkeep.cli.gendoc import main\n"
        "sys.exit(main(['--check']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
