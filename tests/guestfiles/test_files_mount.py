"""``vmkeep mount`` of a file restore point: its files at the mount's root, as they were backed up
(content, holes read as zeros, times, modes without write bits, symbolic and hard links,
extended attributes), read-only; and a file point named where an image point is needed is one
line, exit 14 — never "malformed repository data" (exit 13)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.guestfiles.files_helpers import build_tree, change_tree, comparable, snapshot, write
from tests.restore.test_restore_mount import assert_unmounted_cleanly, wait_mounted, wait_stopped
from tests.support.run_cli import VMKEEP, cli_env


def vmkeep(*args: str, repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, timeout=600,
                          env=cli_env(dict(os.environ), VMKEEP_REPO=str(repo),
                                      PREFECT_API_URL=""))


@pytest.fixture
def backed_tree(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[object, ...]]]:
    """A repository with two file points of one tree; returns (repo, tree, first snapshot)."""
    repo, tree = tmp_path / "repo", tmp_path / "tree"
    tree.mkdir()
    build_tree(tree)
    with open(tree / "sparse.img", "wb") as f:
        f.truncate(8 << 20)
        f.seek(3 << 20)
        f.write(b"middle")
    write(tree / "weird name \\ with: backslash", b"kept on Linux\n")
    assert vmkeep("init", repo=repo).returncode == 0
    done = vmkeep("backup", "files", str(tree), "--name", "docs", repo=repo)
    assert done.returncode == 0, done.stderr
    first = snapshot(tree)
    change_tree(tree)
    done = vmkeep("backup", "files", str(tree), "--name", "docs", repo=repo)
    assert done.returncode == 0, done.stderr
    return repo, tree, first


def test_a_file_point_mounts_as_its_tree(
    backed_tree: tuple[Path, Path, dict[str, tuple[object, ...]]], tmp_path: Path
) -> None:
    repo, _tree, first = backed_tree
    points = vmkeep("list", "--json", repo=repo)
    oldest = json.loads(points.stdout)["points"][0]["short_id"]
    mnt = tmp_path / "mnt"
    proc = subprocess.Popen([*VMKEEP, "mount", oldest, str(mnt)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(dict(os.environ), VMKEEP_REPO=str(repo),
                                        PREFECT_API_URL=""))
    try:
        wait_mounted(str(mnt), proc)
        seen = snapshot(mnt)
        assert comparable(seen, modes=False) == comparable(first, modes=False)
        for rel, entry in first.items():  # modes as backed up, write bits taken away
            if entry[0] != "symlink":
                assert seen[rel][1] == entry[1] & ~0o222, rel  # type: ignore[operator]
        assert os.readlink(mnt / "docs" / "readme-link") == "../README"
        assert os.lstat(mnt / "bin" / "a-hardlink").st_nlink == 2
        # one file for cp -a, rsync -H and du: the hard links share their inode number
        linked = os.lstat(mnt / "bin" / "a-hardlink").st_ino
        assert linked == os.lstat(mnt / "docs" / "a.txt").st_ino
        assert {e.name: e.inode() for e in os.scandir(mnt / "bin")}["a-hardlink"] == linked
        copied = tmp_path / "copied"  # what a user copying out of the mount gets
        subprocess.run(["cp", "-a", f"{mnt}/.", str(copied)], check=True, capture_output=True)
        copy_ino = (copied / "bin" / "a-hardlink").stat().st_ino
        assert copy_ino == (copied / "docs" / "a.txt").stat().st_ino
        others = [os.lstat(mnt / rel).st_ino for rel, e in first.items()
                  if rel not in ("bin/a-hardlink", "docs/a.txt")]
        assert len(set(others)) == len(others)
        assert os.lstat(mnt / "docs" / "a.txt").st_ino not in others
        assert os.getxattr(mnt / "README", "user.origin") == b"test"
        with open(mnt / "sparse.img", "rb") as f:
            f.seek((3 << 20) - 2)
            assert f.read(10) == b"\0\0middle\0\0"
        assert os.stat(mnt / "sparse.img").st_size == 8 << 20
        assert not stat.S_IMODE(os.stat(mnt / "README").st_mode) & 0o222
        with pytest.raises(OSError):
            open(mnt / "README", "r+b")  # noqa: SIM115 - read-only mount
        with pytest.raises(OSError):
            (mnt / "new-file").write_bytes(b"x")
    finally:
        proc.send_signal(signal.SIGINT)
        wait_stopped(proc, mnt)
    assert_unmounted_cleanly(proc, mnt)


@pytest.mark.parametrize("verb", [
    ["restore", "image", "docs@latest", "--to", "{tmp}/out.img"],
    ["verify", "boot", "docs@latest"],
    ["verify", "fs", "docs@latest"],
    ["export", "docs@latest", "--nbd"],
])
def test_a_file_point_where_an_image_is_needed_is_one_line_exit_14(
    backed_tree: tuple[Path, Path, dict[str, tuple[object, ...]]], tmp_path: Path,
    verb: list[str],
) -> None:
    repo = backed_tree[0]
    done = vmkeep(*(a.format(tmp=tmp_path) for a in verb), repo=repo)
    assert done.returncode == 14, done.stderr
    assert "Traceback" not in done.stderr and "malformed" not in done.stderr
    assert "is of kind 'files'" in done.stderr
    assert not (tmp_path / "out.img").exists()
