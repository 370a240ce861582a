"""A path inside a restore point reads the same in every command and for every kind of point:
``.`` and empty components dropped, ``..`` a usage error (exit 2).  Before, an image point's
``POINT:disk0-whole/..`` listed the volume's root in ``ls`` and failed one item in
``restore files`` (exit 3), while a file point's refused it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import run_cli, vmkeep_json
from vmkeep.errors import UsageError
from vmkeep.point_paths import normalize


def test_normalize() -> None:
    assert normalize("") == "/" and normalize("//a/./b/") == "/a/b"
    for bad in ("..", "/a/../b", "a/..", "a\0b"):
        with pytest.raises(UsageError, match="not allowed inside a restore point"):
            normalize(bad)


def test_dot_dot_is_a_usage_error_for_image_and_file_points(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    img = tmp_path / "disk.img"
    b.mkfs_ext4(src, img)
    repo = tmp_path / "repo"
    vmkeep_json("init", repo=repo)
    image = vmkeep_json("backup", "image", str(img), "--name", "img", repo=repo)["id"][:8]
    files = vmkeep_json("backup", "files", str(src), "--name", "files", repo=repo)["id"][:8]
    for ref in (f"{image}:disk0-whole/..", f"{image}:disk0-whole/etc/../..", f"{files}:/.."):
        for command in (["ls", ref], ["restore", "files", ref, "--to", str(tmp_path / "out")]):
            code, _out, err = run_cli(*command, repo=repo)
            assert code == 2 and "'..' and NUL are not allowed" in err, (command, err)
    code, out, err = run_cli("ls", f"{image}:disk0-whole//etc/./hosts/", repo=repo)
    assert code == 0 and out.split()[-1] == "hosts", err


def test_an_empty_reference_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vmkeep protect ""`` (an empty variable in a script) said the prefix '' is ambiguous
    between every point — or, with one point, picked it."""
    monkeypatch.chdir(tmp_path)  # where a blank target would have been written
    repo = tmp_path / "repo"
    vmkeep_json("init", repo=repo)
    img = tmp_path / "disk.img"
    img.write_bytes(b"\1" * 65536)
    vmkeep_json("backup", "image", str(img), "--name", "img", repo=repo)
    for command in (["protect", ""], ["ls", ""], ["forget", " ", "--dry-run"]):
        code, _out, err = run_cli(*command, repo=repo)
        assert code == 2 and "empty restore point reference" in err, (command, err)
    # an empty pattern matched every file point's root; an empty target read as a folder ''
    code, _out, err = run_cli("find", "", repo=repo)
    assert code == 2 and "the pattern is empty" in err, err
    for to in (["--to", ""], ["--to", " "], ["--to-guest", ""]):
        code, _out, err = run_cli("restore", "files", "img@latest:disk0-whole", *to, repo=repo)
        assert code == 2 and "the target is empty" in err, (to, err)
    code, _out, err = run_cli("restore", "image", "img@latest", "--to", " ", repo=repo)
    assert code == 2 and "an empty path" in err, err  # was a file named ' '
