"""`vmkeep list`'s table: the Size column says how much each restore point holds, for image
and file backups alike (a file backup has no disks; its size is its files' bytes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.run_cli import VMKEEP, cli_env


def test_a_file_backup_lists_the_bytes_of_its_files(tmp_path: Path) -> None:
    repo, data = tmp_path / "repo", tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_bytes(b"x" * 1000)
    (data / "sub" / "b.bin").write_bytes(b"y" * 2 * 1024 * 1024)
    env = cli_env()

    def vmkeep(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*VMKEEP, *args, "--repo", str(repo)], capture_output=True,
                             text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return out

    vmkeep("init")
    vmkeep("backup", "files", str(data), "--name", "data")
    [row] = [line for line in vmkeep("list").stdout.splitlines() if " files " in line]
    assert "2.0 MiB" in row, row  # 2 MiB + 1000 bytes of file data, not "0 B"


def test_an_empty_instant_restore_list_says_so(tmp_path: Path) -> None:
    """Like `list`'s "0 restore point(s)": an empty listing is told, not a silent exit."""
    env = cli_env()
    env["VMKEEP_STATE_DIR"] = str(tmp_path / "state")
    out = subprocess.run([*VMKEEP, "instant-restore", "list"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and out.stdout == "", out.stderr
    assert "0 instant-restore run(s) on this machine" in out.stderr


def test_a_file_backup_source_that_is_missing_or_a_file_says_which(tmp_path: Path) -> None:
    """A missing source was "not a directory", as a file given by mistake is."""
    env = cli_env()
    (tmp_path / "a.txt").write_text("x")
    for source, says in ((tmp_path / "nowhere", "no such file or directory"),
                         (tmp_path / "a.txt", "not a directory")):
        out = subprocess.run([*VMKEEP, "backup", "files", str(source), "--name", "n", "--repo",
                              str(tmp_path / "repo")], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 14, out.stderr
        assert f"{source}: {says} (a file backup's source is a folder)" in out.stderr


def test_the_folder_shown_beside_a_shared_vm_name_includes_its_vapp() -> None:
    """`list` tells VMs of one name apart by their place: a vApp's VM by the vApp's path."""
    from types import SimpleNamespace

    from vmkeep.cli.repo_cmds import _vm_folder

    def point(**config: object) -> SimpleNamespace:
        return SimpleNamespace(meta={"instance_uuid": "u-1", "vm_config": config})

    assert _vm_folder(point(folder="/DC1/vm/teamA")) == "/DC1/vm/teamA"
    assert _vm_folder(point(folder="/DC1/vm", vapp="shop")) == "/DC1/vm/shop"
    assert _vm_folder(point(folder="/DC1/vm/", vapp="outer/inner")) == "/DC1/vm/outer/inner"
    assert _vm_folder(point()) == "u-1"
