"""Restores into a guest build guest paths only from checked names: a hostile file system cannot
address anything outside the target directory, on Linux or Windows guests (no lab needed: the
guest operations are recorded instead of sent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmkeep.browse import guest
from vmkeep.browse.catalog import glob_regex
from vmkeep.browse.errors import BrowseError
from vmkeep.browse.guest import GuestTarget, upload_tree
from vmkeep.browse.point import PointImage
from vmkeep.storage.repository import Repository


def test_guest_target_parsing():
    assert GuestTarget.parse("web01:/root/out") == GuestTarget("web01", "/root/out", False)
    win = GuestTarget.parse("win01:C:\\Restore")
    assert win.windows and win.path(("a", "b.txt")) == "C:\\Restore\\a\\b.txt"
    assert GuestTarget.parse("win01:D:").path(("x",)) == "D:\\x"
    for bad in ("web01", "web01:", ":/x", "web01:relative/dir"):
        with pytest.raises(BrowseError):
            GuestTarget.parse(bad)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\0b", "x" * 256])
def test_unsafe_names_are_refused_everywhere(name):
    for target in (GuestTarget("v", "/t"), GuestTarget("v", "C:\\t", True)):
        assert target.refuse(name)


@pytest.mark.parametrize("name", ["a\\b", "a:b", "con?", "x*", 'q"', "trailing.", "trailing ",
                                  "a|b"])
def test_windows_only_refusals(name):
    assert GuestTarget("v", "C:\\t", True).refuse(name)
    assert not GuestTarget("v", "/t").refuse(name)


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
def test_joined_paths_stay_below_the_target(names):
    for target in (GuestTarget("v", "/srv/t"), GuestTarget("v", "C:\\t", True)):
        if any(target.refuse(n) for n in names):
            continue
        path = target.path(tuple(names))
        assert path.startswith(target.directory + target.sep)
        assert path.count(target.sep) == target.directory.count(target.sep) + len(names)


class Recorder:
    def __init__(self) -> None:
        self.dirs: list[str] = []
        self.files: dict[str, int] = {}

    def make_directory(self, session: Any, vm: Any, creds: Any, path: str) -> None:
        self.dirs.append(path)

    def upload_file(self, session, vm, creds, path, fileobj, size, *, overwrite=False) -> None:
        fileobj.read(min(size, 1 << 16))
        self.files[path] = size


@pytest.mark.parametrize("directory", ["/srv/restore", "C:\\Restore"])
def test_hostile_file_system_into_a_guest(backed, monkeypatch, directory):
    rec = Recorder()
    monkeypatch.setattr(guest.guestops, "make_directory", rec.make_directory)
    monkeypatch.setattr(guest.guestops, "upload_file", rec.upload_file)
    target = GuestTarget.parse(f"vm:{directory}")
    with PointImage.open(Repository.open(str(backed.repo)), "evil@latest") as img:
        summary = upload_tree(None, None, None, img.filesystem("whole"), ["/"], target)
    reasons = {(w.path.rsplit("/", 1)[-1], w.reason) for w in summary.skipped}
    assert ("x.sh", "unsafe-name") in reasons and ("x9", "unsafe-name") in reasons
    assert ("evil", "symlink") in reasons and ("up", "symlink") in reasons
    assert ("fifo", "special-file") in reasons and ("dev", "special-file") in reasons
    assert ("sparse", "too-large") in reasons  # 1 TiB of holes would cross the LAN as zeros
    sep = target.sep
    for path in [*rec.dirs, *rec.files]:
        assert path == directory or path.startswith(directory + sep)
        assert ".." not in path.split(sep)
    assert {p.rsplit(sep, 1)[-1] for p in rec.files} >= {"hello.txt", "suid"}


def test_two_volumes_chosen_entries_with_one_name_into_a_guest(backed, monkeypatch):
    """``p1/hello.txt`` and ``p2/hello.txt`` into one guest folder: the first is uploaded, the
    second reported as a ``duplicate-name`` loss (not uploaded over it, not an "exists")."""
    from vmkeep.tasks.restore import restore_to_guest

    rec = Recorder()
    monkeypatch.setattr(guest.guestops, "make_directory", rec.make_directory)
    monkeypatch.setattr(guest.guestops, "upload_file", rec.upload_file)
    target = GuestTarget.parse("vm:/srv/restore")
    with PointImage.open(Repository.open(str(backed.repo)), "gpt@latest") as img:
        sources = [
            (f"{v}:", img.filesystem(v), ["/hello.txt", "/data"]) for v in ("p1", "p2")
        ]
        summary = restore_to_guest(None, None, None, sources, target)
    assert not summary["ok"] and summary["errors"] == 2, summary
    assert [(w["path"], w["reason"], w["detail"]) for w in summary["skipped"]] == [
        ("/hello.txt", "duplicate-name", "'hello.txt' chosen twice (kept p1:/hello.txt)"),
        ("/data", "duplicate-name", "'data' chosen twice (kept p1:/data)"),
    ]
    assert "/srv/restore/hello.txt" in rec.files and "taken" not in summary


def _ext4_recorded(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[Path, Recorder]:
    """``tree`` as an ext4 image, and guest operations recorded instead of sent."""
    import shutil
    import subprocess

    if shutil.which("mke2fs") is None:
        from tests.missing import missing as tool_missing

        tool_missing("mke2fs not installed")
    img = tmp_path / "ext4.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(img), "4M"],
                   check=True)
    rec = Recorder()
    monkeypatch.setattr(guest.guestops, "make_directory", rec.make_directory)
    monkeypatch.setattr(guest.guestops, "upload_file", rec.upload_file)
    return img, rec


@pytest.mark.parametrize("directory", ["/srv/restore", "C:\\Restore"])
def test_names_that_differ_only_in_case_are_one_name_in_a_windows_guest(
    tmp_path, monkeypatch, directory
):
    """``README`` and ``readme`` are two files on Linux and one in a Windows guest: there the
    first is uploaded and the second reported as a ``duplicate-name`` loss (it used to meet the
    first as "exists", or replace it with --overwrite)."""
    from vmkeep.disks.fs import open_filesystem
    from vmkeep.tasks.restore import restore_to_guest

    tree = tmp_path / "tree"
    (tree / "docs").mkdir(parents=True)
    (tree / "docs" / "README").write_bytes(b"upper")
    (tree / "docs" / "readme").write_bytes(b"lower")
    (tree / "Notes").write_bytes(b"n")
    (tree / "notes").write_bytes(b"n")
    img, rec = _ext4_recorded(tree, tmp_path, monkeypatch)
    target = GuestTarget.parse(f"vm:{directory}")
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        summary = restore_to_guest(
            None, None, None, [("v:", fs, ["/docs", "/Notes", "/notes"])], target
        )
    reasons = sorted((w["path"], w["reason"]) for w in summary["skipped"])
    sep = target.sep
    names = sorted(p.rsplit(sep, 1)[-1] for p in rec.files)
    if target.windows:
        assert summary["errors"] == 2 and not summary["ok"], summary
        assert [r for _p, r in reasons] == ["duplicate-name", "duplicate-name"]
        assert len(names) == 2 and {n.casefold() for n in names} == {"readme", "notes"}
    else:
        assert summary["ok"] and reasons == []
        assert names == ["Notes", "README", "notes", "readme"]


def test_a_name_that_is_not_utf8_is_refused_before_it_reaches_the_guest(tmp_path, monkeypatch):
    """A Linux guest's ``caf\\xe9`` (Latin-1) cannot travel in a guest operation's SOAP text:
    it is reported as ``unsafe-name`` and the rest uploaded — it used to fail the whole
    restore with a UnicodeEncodeError from pyVmomi's serializer."""
    import os

    from vmkeep.disks.fs import open_filesystem
    from vmkeep.tasks.restore import restore_to_guest

    tree = tmp_path / "tree"
    tree.mkdir()
    with open(os.fsencode(tree) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"latin-1 name")
    (tree / "plain.txt").write_bytes(b"plain")
    img, rec = _ext4_recorded(tree, tmp_path, monkeypatch)
    with open(img, "rb") as fh:
        summary = restore_to_guest(None, None, None, [("v:", open_filesystem(fh, "v"), ["/"])],
                                   GuestTarget.parse("vm:/srv/restore"))
    assert [(w["path"], w["reason"]) for w in summary["skipped"]] == [
        ("/caf\udce9.txt", "unsafe-name")]
    assert "not UTF-8" in summary["skipped"][0]["detail"]
    assert "/srv/restore/plain.txt" in rec.files and not summary["ok"]
    for path in [*rec.dirs, *rec.files]:
        path.encode("utf-8")


@pytest.mark.parametrize(
    ("pattern", "name", "hit"),
    [
        ("*.conf", "nginx.conf", True),
        ("*.conf", "a/b.conf", False),
        ("**/b.conf", "a/b.conf", True),
        ("file-?.txt", "file-1.txt", True),
        ("[!a]*", "abc", False),
        ("[ab]c", "bc", True),
        ("a.b", "axb", False),
        ("(x)+", "(x)+", True),
        ("[]]x", "]x", True),  # "]" first in a class is one of its characters (as fnmatch)
        ("[!]]x", "]x", False),
        ("[!]]x", "ax", True),
        ("[!]", "[!]", True),  # no closing "]": literal
    ],
)
def test_find_globs(pattern, name, hit):
    import re

    assert bool(re.match(glob_regex(pattern), name)) is hit
