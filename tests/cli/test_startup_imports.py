"""The quick verbs start quickly: ``list``, ``ls POINT:PATH`` and a one-file ``restore files``
never import Prefect or pyVmomi (each costs seconds of start-up; neither is needed to read a
repository), nor the licence checks or any other verb's CLI module (lazy registration,
:data:`vmkeep.cli.main.VERB_MODULES`); ``list`` reads manifest headers only, without
``pyarrow.compute`` or the index.  Checked by running each verb in a fresh interpreter and
listing ``sys.modules`` afterwards — not timed (bench/bench_startup.py measures the wall time)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.run_cli import cli_env

#: Runs ``vmkeep ARGS`` (argv[1], JSON) in this interpreter; ``code`` is its exit code.
RUN_CLI = """
import json, sys
sys.argv = ["vmkeep", *json.loads(sys.argv[1])]
from vmkeep.cli.main import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
"""

PROBE = RUN_CLI + """
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "pyVmomi"))
lazy = sorted(
    m for m in sys.modules
    if m in ("pyarrow.compute", "vmkeep.storage.index_cache", "vmkeep.storage.heal", "cryptography")
    or m.startswith(("vmkeep.licensing", "vmkeep.cli."))
)
print("\\nPROBE " + json.dumps({"code": code, "modules": mods, "lazy": lazy}))
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
    # `--no-cache` (restic's flag): the index is read from the repository, no cache is written
    shutil.rmtree(tmp_path / "state" / "cache", ignore_errors=True)  # the backup's
    assert probe(["--no-cache", "ls", "fs@latest:disk0-whole/etc"], env)["code"] == 0
    assert not list((tmp_path / "state" / "cache").glob("*/index.cache"))
    from vmkeep.cli.main import COMMAND_MODULES

    verb_modules = {f"vmkeep.cli.{m}" for m in COMMAND_MODULES}
    for verb, module in (
        (["list"], "vmkeep.cli.repo_cmds"),
        (["ls", "fs@latest:disk0-whole/etc"], "vmkeep.cli.browse"),
        (
            ["restore", "files", "fs@latest:disk0-whole/etc/hello.txt", "--to", str(out)],
            "vmkeep.cli.restore_files",
        ),
    ):
        result = probe(verb, env)
        assert result["modules"] == [], (verb, result["modules"])
        lazy = set(result["lazy"])  # type: ignore[arg-type]
        assert not {m for m in lazy if m.startswith("vmkeep.licensing")}, (verb, lazy)
        others = (lazy & verb_modules) - {module}
        assert module in lazy and not others, (verb, others)
        if verb == ["list"]:  # headers only: no index load (its modules), no pyarrow.compute
            assert not lazy & {
                "pyarrow.compute",
                "vmkeep.storage.index_cache",
                "vmkeep.storage.heal",
                "cryptography",
            }, lazy
        else:
            assert "vmkeep.storage.index_cache" in lazy
    assert (out / "hello.txt").read_text() == "hello\n"
    # ls and restore files left the repository's index cache behind, under the state dir
    assert list((tmp_path / "state" / "cache").glob("*/index.cache"))


def test_verb_table_matches_the_registrations() -> None:
    """Every entry of VERB_MODULES names the module that registers that verb (a wrong entry
    would hide a verb), checked against the full registration."""
    import typer
    import typer.main

    from vmkeep.cli.main import _ROOT_VALUED, VERB_MODULES, app, register_all, verb_module

    register_all()
    seen: dict[str, str] = {}
    for cmd in app.registered_commands:
        assert cmd.callback is not None
        seen[cmd.name or cmd.callback.__name__] = cmd.callback.__module__
    for group in app.registered_groups:
        sub = group.typer_instance
        assert sub is not None and group.name
        for cmd in sub.registered_commands:
            assert cmd.callback is not None
            if group.name in ("backup", "restore"):
                seen[f"{group.name} {cmd.name}"] = cmd.callback.__module__
            else:
                seen.setdefault(group.name, cmd.callback.__module__)
    for verb, module in VERB_MODULES.items():
        if verb in seen:
            assert seen[verb] == f"vmkeep.cli.{module}", verb
    missing = set(seen) - set(VERB_MODULES)
    assert not missing, f"add to VERB_MODULES: {sorted(missing)}"
    assert isinstance(app, typer.Typer)
    assert verb_module(["ls", "x:y"]) == "browse"
    assert verb_module(["restore", "files", "--help"]) == "restore_files"
    assert verb_module(["restore", "--help"]) is None
    assert verb_module(["--help"]) is None and verb_module([]) is None
    assert verb_module(["no-such-verb"]) is None
    assert verb_module(["--no-cache", "ls", "x:y"]) == "browse"
    assert verb_module(["--limit-upload", "512", "copy", "--repo", "r"]) == "copy"
    assert verb_module(["--limit-read=512", "--no-cache", "backup", "vm"]) == "backup_vm"
    root_options = {o for p in typer.main.get_command(app).params for o in p.opts}
    assert root_options == {"--no-cache", "--version", *_ROOT_VALUED}


def test_the_vcenter_verbs_register_without_pydantic_ssl_or_pyvmomi() -> None:
    """Every vCenter verb module imports the vCenter target (:mod:`vmkeep.vsphere.target`, the
    one dataclass the option group hands over, the specs validate and the tasks connect with)
    when it registers — ``restore files`` too, a quick verb.  That costs neither pydantic nor
    ``ssl``, pyVmomi or Prefect."""
    modules = [f"vmkeep.cli.{m}" for m in (
        "restore_files", "restore_vm", "restore_disk", "backup_vm", "sweep", "doctor",
        "instant_restore",
    )]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "heavy = ('pydantic', 'pydantic_core', 'ssl', 'pyVmomi', 'prefect')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
        "print(json.dumps('vmkeep.vsphere.target' in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    heavy, imported = map(json.loads, done.stdout.splitlines()[-2:])
    assert heavy == [] and imported, heavy


#: What a direct (no Prefect API) ``backup image`` of a local image into a local repository
#: must not import: none of it is used, and each costs start-up CPU on every backup
#: (docs/performance.md, "Start-up of backup image").  Prefixes of module names.
BACKUP_IMAGE_MUST_NOT_IMPORT = (
    "prefect",
    "pyVmomi",
    "fastapi",
    "uvicorn",
    "starlette",
    "urllib3",
    "cryptography",  # no licence file installed: the community tier needs no signature check
    "dissect.volume",
    "dissect.fat",
    "dissect.extfs",
    "dissect.xfs",
    "dissect.ntfs",
    "vmkeep.flows.backup_image",  # the Prefect flows (vmkeep.flows.run is the adapter used)
    "vmkeep.jobs.maintenance_specs",  # other jobs' pydantic models
    "vmkeep.jobs.restore_specs",
    "vmkeep.jobs.instant_restore",
    "vmkeep.vsphere",
    "vmkeep.browse",
    "vmkeep.tasks.vcenter",
    "vmkeep.storage.disk_restore",
    "vmkeep.storage.retention",
    "vmkeep.runtime.prefect_runtime",
    "vmkeep.runtime.prefect_reports",
    "apprise",  # job reports load it only to send one
    "vmkeep.deployments",
)
#: Exceptions to the prefixes above: the vCenter target dataclass the specs type their
#: ``vcenter`` field with (stdlib only; its package ``__init__`` is a docstring).
BACKUP_IMAGE_MAY_IMPORT = frozenset({"vmkeep.vsphere", "vmkeep.vsphere.target"})

PROBE_ALL = RUN_CLI + """
print("\\nPROBE " + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_backup_image_direct_imports_only_its_own_path(tmp_path: Path) -> None:
    """A direct ``backup image`` (full, then incremental) loads its job, its spec and the
    storage it writes with — not Prefect, the web server, pyVmomi, the other jobs' specs, the
    browse/restore side or the licence signature code (no licence installed)."""
    env = cli_env(
        PREFECT_API_URL="",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        VMKEEP_REPO=str(tmp_path / "repo"),
        VMKEEP_STATE_DIR=str(tmp_path / "state"),
        VMKEEP_CONFIG_DIR=str(tmp_path / "config"),  # no licence file here
    )
    env.pop("VMKEEP_LICENSE", None)
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * 4096 + b"\0" * (1 << 20))  # 1 MiB of data, 1 of zeros
    done = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "init"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    backup = ["backup", "image", str(image), "--name", "disk"]
    for mode in ("full", "incremental"):
        done = subprocess.run(
            [sys.executable, "-c", PROBE_ALL, json.dumps(backup)],
            capture_output=True,
            text=True,
            env=env,
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
        assert line is not None, done.stdout + done.stderr
        result = json.loads(line[6:])
        assert result["code"] == 0, done.stdout + done.stderr
        modules: list[str] = result["modules"]
        assert "vmkeep.jobs.backup_image" in modules and "vmkeep.jobs.specs" in modules
        unwanted = sorted(
            m
            for m in modules
            if m not in BACKUP_IMAGE_MAY_IMPORT
            and any(m == p or m.startswith(p + ".") for p in BACKUP_IMAGE_MUST_NOT_IMPORT)
        )
        assert not unwanted, (mode, unwanted)
        verbs = {m for m in modules if m.startswith("vmkeep.cli.")}
        assert verbs <= {
            "vmkeep.cli.main", "vmkeep.cli.common", "vmkeep.cli.fast_exit",
            "vmkeep.cli.stdout_guard", "vmkeep.cli.backup_image", "vmkeep.cli.value_names",
            "vmkeep.cli.spec_options",
        }, (mode, verbs)
        flows = {m for m in modules if m.startswith("vmkeep.flows.")}
        assert flows == {"vmkeep.flows.run"}, (mode, flows)
    listing = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "list", "--json"],
        capture_output=True, text=True, env=env,
    )
    assert listing.returncode == 0 and listing.stdout.count('"disk"') >= 2, listing.stdout


def test_a_first_backup_loads_no_compute_functions(tmp_path: Path, env: dict[str, str]) -> None:
    """A backup into a repository without index files or damage records reads nothing it would
    filter: ``pyarrow.compute`` (≈ 30 ms of imports, all serial start-up) stays unloaded."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * 4096 * 4)
    init = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "init"], capture_output=True, text=True, env=env
    )
    assert init.returncode == 0, init.stderr
    result = probe(["backup", "image", str(image), "--name", "d", "--no-prefect"], env)
    assert result["modules"] == []
    assert "pyarrow.compute" not in result["lazy"], result["lazy"]
