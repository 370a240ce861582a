"""``restore files --preserve-owner [--keep-setid]``: owners and set-id bits come back only when
asked, only as root and only into a local folder — from image points (a real ext4 made by
mke2fs) and file points alike.  By default every restored file belongs to the restoring user
and loses its set-uid/set-gid bits (guest data is hostile: a guest's set-uid root shell must
not become one on the backup server)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import run_cli, vmkeep_json

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")

BOB = 1234


def _tree(root: Path) -> Path:
    tree = root / "tree"
    home = tree / "home" / "bob"
    home.mkdir(parents=True)
    tool = home / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    (home / "notes.txt").write_bytes(b"bob's\n")
    for path in (home, tool, home / "notes.txt"):
        os.chown(path, BOB, BOB + 1)
    os.chmod(tool, 0o4755)  # after chown, which clears set-id bits
    return tree


@pytest.fixture(scope="module")
def points(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("owners")
    tree = _tree(root)
    ext4 = root / "ext4.img"
    b.mkfs_ext4(tree, ext4, 8)
    repo = root / "repo"
    vmkeep_json("init", "--chunk-size", "64", repo=repo)
    vmkeep_json("backup", "image", str(ext4), "--name", "img", repo=repo)
    vmkeep_json("backup", "files", str(tree), "--name", "files", repo=repo)
    return repo, {"image": "img@latest:whole/home", "files": "files@latest:/home"}


def _owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.mark.parametrize("kind", ["image", "files"])
def test_owners_and_setid_come_back_only_when_asked(
    points: tuple[Path, dict[str, str]], kind: str, tmp_path: Path
) -> None:
    repo, refs = points
    plain, owners, setid = (tmp_path / n for n in ("plain", "owners", "setid"))
    vmkeep_json("restore", "files", refs[kind], "--to", str(plain), repo=repo)
    assert _owner_and_mode(plain / "home" / "bob" / "tool") == (0, 0, 0o755)
    assert _owner_and_mode(plain / "home" / "bob")[:2] == (0, 0)

    vmkeep_json("restore", "files", refs[kind], "--to", str(owners), "--preserve-owner",
                repo=repo)
    assert _owner_and_mode(owners / "home" / "bob" / "tool") == (BOB, BOB + 1, 0o755)
    assert _owner_and_mode(owners / "home" / "bob" / "notes.txt")[:2] == (BOB, BOB + 1)
    assert _owner_and_mode(owners / "home" / "bob")[:2] == (BOB, BOB + 1)

    vmkeep_json("restore", "files", refs[kind], "--to", str(setid), "--preserve-owner",
                "--keep-setid", repo=repo)
    assert _owner_and_mode(setid / "home" / "bob" / "tool") == (BOB, BOB + 1, 0o4755)


@pytest.mark.parametrize(("extra", "says"), [
    (["--keep-setid"], "--keep-setid needs --preserve-owner"),
    (["--preserve-owner", "--to", "sftp://backup01/srv/x"], "restore into a local folder"),
    (["--preserve-owner", "--to-guest", "vm1:/tmp", "--vcenter", "https://127.0.0.1:1"],
     "restore into a local folder"),
])
def test_ownership_that_cannot_be_honoured_is_a_usage_error_before_anything_is_written(
    points: tuple[Path, dict[str, str]], extra: list[str], says: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, refs = points
    monkeypatch.chdir(tmp_path)
    target = [] if "--to" in extra or "--to-guest" in extra else ["--to", str(tmp_path / "out")]
    code, _out, err = run_cli("restore", "files", refs["files"], *target, *extra, repo=repo)
    assert code == 2 and says in err, (code, err)
    assert list(tmp_path.iterdir()) == []


def test_owners_need_root(
    points: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, refs = points
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, _out, err = run_cli("restore", "files", refs["files"], "--to", str(tmp_path / "out"),
                              "--preserve-owner", repo=repo)
    assert code == 2 and "--preserve-owner needs root" in err, (code, err)
    assert not (tmp_path / "out").exists()
