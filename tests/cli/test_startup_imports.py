"""The quick verbs start quickly: ``list``, ``ls POINT:PATH`` and a one-file ``restore files``
never import Prefect or pyVmomi (each costs seconds of start-up; neither is needed to read a
repository).  Checked by running each verb in a fresh interpreter and listing ``sys.modules``
afterwards — not timed (bench/bench_startup.py measures the wall time)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.run_cli import cli_env

PROBE = """
import json, sys
sys.argv = ["vmkeep", *json.loads(sys.argv[1])]
from vmkeep.cli.main import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "pyVmomi"))
print("\\nPROBE " + json.dumps({"code": code, "modules": mods}))
"""


def probe(args: list[str], env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, env=env
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, done.stdout + done.stderr
    result: dict[str, object] = json.loads(line[6:])
    assert result["code"] == 0, done.stdout + done.stderr
    return result


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    if shutil.which("mke2fs") is None:
        pytest.skip("mke2fs is needed for a real ext4 image")
    return cli_env(
        PREFECT_API_URL="",
        PREFECT_HOME=str(tmp_path / "prefect-home"),  # no shared profile naming an API
        VMKEEP_REPO=str(tmp_path / "repo"),
        VMKEEP_STATE_DIR=str(tmp_path / "state"),
    )


def test_list_ls_and_restore_files_import_neither_prefect_nor_pyvmomi(
    tmp_path: Path, env: dict[str, str]
) -> None:
    tree = tmp_path / "tree" / "etc"
    tree.mkdir(parents=True)
    (tree / "hello.txt").write_text("hello\n")
    image = tmp_path / "fs.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree.parent), str(image), "8M"],
        check=True,
        capture_output=True,
    )
    vmkeep = [sys.executable, "-m", "vmkeep.cli"]
    for args in (["init"], ["backup", "image", str(image), "--name", "fs", "--no-prefect"]):
        done = subprocess.run([*vmkeep, *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr

    out = tmp_path / "out"
    for verb in (
        ["list"],
        ["ls", "fs@latest:disk0-whole/etc"],
        ["restore", "files", "fs@latest:disk0-whole/etc/hello.txt", "--to", str(out)],
    ):
        result = probe(verb, env)
        assert result["modules"] == [], (verb, result["modules"])
    assert (out / "hello.txt").read_text() == "hello\n"
