"""File backups of a local tree: two points of a changing tree restore exactly; change detection
reads only changed files; changing and unreadable files are reported; excludes and caches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from tests.guestfiles.files_helpers import (
    build_tree,
    change_tree,
    comparable,
    hardlink_groups,
    snapshot,
)
from vmkeep.flows.backup_files import backup_files as backup_flow
from vmkeep.flows.restore_file_point import restore_file_point
from vmkeep.flows.run import run_flow
from vmkeep.guestfiles.backup import commit_file_point
from vmkeep.guestfiles.browse import list_dir
from vmkeep.guestfiles.local import LocalSource
from vmkeep.guestfiles.restore import restore_paths
from vmkeep.storage.file_backup import backup_files
from vmkeep.storage.file_manifest import FileEntry, latest_file_point, load_file_point
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.usefixtures("licensed")


def run_backup(repo: Repository, src: Path, name: str = "t", **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = run_flow(
        backup_flow, False, repo=repo.backend.location, source=str(src), name=name, **kw
    )
    return out


def restore_to(repo: Repository, point: str, dest: Path, paths: list[str] | None = None) -> Any:
    dest.mkdir()
    return run_flow(
        restore_file_point, False, repo=repo.backend.location, point=point, target=str(dest),
        paths=paths,
    )


def test_two_points_of_a_changing_tree_restore_exactly(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    v1 = snapshot(src)
    first = run_backup(repo, src)
    change_tree(src)
    v2 = snapshot(src)
    second = run_backup(repo, src)
    assert second["parent"] == first["id"] and not second["partial"]
    assert second["files_unchanged"] >= 1 and second["files_changed"] >= 2
    for point, expected in ((first["id"], v1), (second["id"], v2)):
        dest = tmp_path / f"out-{point[:8]}"
        summary = restore_to(repo, point, dest)
        assert summary["ok"], summary
        got = snapshot(dest)
        assert comparable(got) == comparable(expected)
        assert hardlink_groups(got) == hardlink_groups(expected)
        assert hardlink_groups(expected)  # the test tree has hard links


def test_restore_selected_paths_and_ls(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    point = run_backup(repo, src)["id"]
    summary = restore_to(repo, point, tmp_path / "out", ["/docs", "/README"])
    assert summary["ok"]
    assert sorted(os.listdir(tmp_path / "out")) == ["README", "docs"]
    assert (tmp_path / "out" / "docs" / "big.bin").read_bytes() == (
        src / "docs" / "big.bin"
    ).read_bytes()
    listing = {e.name: e for e in list_dir(repo, point[:10], "/docs")}
    assert set(listing) == {"a.txt", "big.bin", "keep.txt", "readme-link"}
    assert listing["readme-link"].type == "symlink" and listing["readme-link"].link == "../README"
    assert listing["a.txt"].mode_text == "-rw-------" and listing["a.txt"].size == 1000
    assert [e.name for e in list_dir(repo, "t@latest", "/docs/a.txt")] == ["a.txt"]
    assert listing["big.bin"].to_json()["type"] == "file"


def test_two_chosen_entries_with_one_name_restore_the_first_and_report_the_second(
    repo: Repository, tmp_path: Path
) -> None:
    """``/a/x`` and ``/b/x`` cannot both be ``DIR/x``: the first comes back (with its own
    extended attributes, not the second's), the second is a ``duplicate-name`` loss."""
    src = tmp_path / "src"
    for folder, text in (("a", b"one"), ("b", b"two")):
        (src / folder).mkdir(parents=True)
        (src / folder / "x").write_bytes(text)
    os.setxattr(src / "b" / "x", "user.tag", b"second")
    point = run_backup(repo, src)["id"]
    summary = restore_to(repo, point, tmp_path / "out", ["/a/x", "/b/x"])
    assert not summary["ok"] and summary["errors"] == 1 and summary["files"] == 1, summary
    assert [(w["path"], w["reason"]) for w in summary["skipped"]] == [("/b/x", "duplicate-name")]
    out = tmp_path / "out" / "x"
    assert out.read_bytes() == b"one" and "user.tag" not in os.listxattr(out)


class CountingSource(LocalSource):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.opened: list[bytes] = []

    def open(self, entry: FileEntry) -> BinaryIO:
        self.opened.append(entry.path)
        return super().open(entry)


def backup_with(repo: Repository, source: LocalSource, name: str = "c") -> Any:
    parent = latest_file_point(repo, name)
    result = backup_files(repo, source, parent)
    commit_file_point(repo, name, result, source=source.location, client="t",
                      parent=parent.id if parent else None)
    return result


def test_unchanged_files_are_not_read(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    for i in range(50):
        (src / "many").mkdir(exist_ok=True)
        (src / "many" / f"f{i}").write_bytes(b"x%d" % i)
    first = CountingSource(src)
    backup_with(repo, first)
    assert len(first.opened) > 50
    again = CountingSource(src)
    result = backup_with(repo, again)
    assert again.opened == [] and result.stats.bytes_read == 0
    (src / "many" / "f7").write_bytes(b"changed!")
    third = CountingSource(src)
    result = backup_with(repo, third)
    assert third.opened == [b"/many/f7"]
    assert result.stats.files_changed == 1


class ChangingSource(LocalSource):
    """Appends to a file right after opening it: the file changes while it is read."""

    def open(self, entry: FileEntry) -> BinaryIO:
        f = super().open(entry)
        if entry.path == b"/README":
            with open(self.host_path(entry.path), "ab") as w:
                w.write(b"more")
        return f


def test_file_changing_while_read_is_reported(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    result = backup_with(repo, ChangingSource(src))
    assert result.stats.changed_while_read == 1
    assert [(w.path, w.reason) for w in result.warnings] == [("/README", "changed-while-read")]
    assert not result.partial


class FailingSource(LocalSource):
    def open(self, entry: FileEntry) -> BinaryIO:
        if entry.path == b"/docs/a.txt":
            raise PermissionError(13, "Permission denied")
        return super().open(entry)


def test_unreadable_file_is_partial_and_the_rest_backed_up(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    build_tree(src, links=False)
    result = backup_with(repo, FailingSource(src))
    assert result.partial and result.stats.unreadable == 1
    assert [w.reason for w in result.warnings] == ["unreadable"]
    point = load_file_point(repo, "c@latest")
    paths = {e.path for e in point.entries}
    assert b"/docs/a.txt" not in paths and b"/docs/big.bin" in paths
    restore_paths(repo, point, ["/"], tmp_path / "out" if (tmp_path / "out").mkdir() is None
                  else "")
    assert (tmp_path / "out" / "docs" / "big.bin").read_bytes() == (
        src / "docs" / "big.bin"
    ).read_bytes()


def test_excludes_and_cache_dirs(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src, links=False)
    (src / "cache").mkdir()
    (src / "cache" / "CACHEDIR.TAG").write_bytes(
        b"Signature: 8a477f597d28d172789f06886806bc55\n"
    )
    (src / "cache" / "blob").write_bytes(b"cached")
    (src / "docs" / "x.tmp").write_bytes(b"tmp")
    (src / "build").mkdir()
    (src / "build" / "out.o").write_bytes(b"obj")
    summary = run_backup(repo, src, excludes=["*.tmp", "/build/"])
    point = load_file_point(repo, summary["id"])
    paths = {e.path for e in point.entries}
    assert b"/docs/x.tmp" not in paths and b"/build" not in paths
    assert b"/cache" not in paths and b"/docs/a.txt" in paths
    assert {w["reason"] for w in summary["warnings"]} == {"excluded-cache"}


def test_unusable_licence_refuses_before_reading(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.licensing.licensing_devkeys import DEV_LICENCE
    from vmkeep.licensing.errors import LicenceRefused

    tampered = tmp_path / "tampered.json"
    text = DEV_LICENCE.read_text()
    tampered.write_text(text.replace('"backup_client": 1000', '"backup_client": 1001'))
    monkeypatch.setenv("VMKEEP_LICENSE", str(tampered))
    import vmkeep.tasks.files as tf

    def must_not_open(*a: Any, **kw: Any) -> Any:
        raise AssertionError("the source was opened before the licence check")

    monkeypatch.setattr(tf, "open_source", must_not_open)
    with pytest.raises(LicenceRefused):
        run_backup(repo, tmp_path)
    assert repo.point_ids() == []


def test_cli_partial_exit_code_3(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A real unreadable file; as root, the CLI runs without the capabilities that bypass file
    permissions (root reads everything otherwise)."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="vmkeep-partial-"))
    src = base / "src"
    build_tree(src, xattrs=False, links=False)
    (src / "secret").write_bytes(b"no")
    (src / "secret").chmod(0)
    cmd = [sys.executable, "-m", "tests.support.run_cli"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("setpriv (util-linux) is needed to drop root for this test")
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(base / "repo"))
    try:
        assert subprocess.run([*cmd, "init"], env=env, capture_output=True).returncode == 0
        run = subprocess.run([*cmd, "backup", "files", str(src), "--name", "p", "--json"],
                             env=env, capture_output=True, text=True)
        assert run.returncode == 3, run.stderr
        out = json.loads(run.stdout)
        assert out["partial"] and out["unreadable"] == 1
        assert [w["path"] for w in out["warnings"]] == ["/secret"]
        assert out["files"] >= 5
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_exclude_file_patterns_join_the_excludes(repo: Repository, tmp_path: Path) -> None:
    """``--exclude-file`` (restic's, borg's ``--exclude-from``): one pattern per line, blank
    lines and ``#`` comments skipped, with ``--exclude`` given beside it; an unreadable file is a
    usage error before anything is read."""
    import json
    import subprocess
    import sys

    src = tmp_path / "src"
    for rel in ("docs/a.txt", "docs/x.tmp", "build/out.o", "logs/today.log", "keep/b.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    patterns = tmp_path / "excludes.txt"
    patterns.write_text("# scratch\n*.tmp\n\n   /build/   \n# logs stay? no:\n")
    more = tmp_path / "more.txt"
    more.write_text("logs/\n")
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=repo.backend.location)
    cmd = [sys.executable, "-m", "tests.support.run_cli", "backup", "files", str(src), "--name",
           "ex", "--json", "--exclude-file", str(patterns), "--exclude-file", str(more),
           "--exclude", "keep/"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    paths = {e.path for e in load_file_point(repo, json.loads(run.stdout)["id"]).entries}
    assert paths == {b"/", b"/docs", b"/docs/a.txt"}, paths
    bad = subprocess.run([*cmd[:-4], "--exclude-file", str(tmp_path / "missing")], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--exclude-file" in bad.stderr and "No such file" in (
        bad.stderr), bad.stderr


def test_exclude_file_patterns_of_names_that_are_not_utf8(tmp_path: Path) -> None:
    """A pattern file naming a Latin-1 file (a Linux guest's leftover) was refused as "not
    UTF-8"; its bytes are now kept as a name's are, so the pattern excludes that file — as
    ``--exclude`` from the shell does.  A file past the size limit (``/dev/zero``) is refused
    instead of read forever."""
    from vmkeep.cli.backup_files import read_pattern_files
    from vmkeep.errors import UsageError
    from vmkeep.guestfiles.excludes import Excludes

    patterns = tmp_path / "excludes.txt"
    patterns.write_bytes(b"# Latin-1\ncaf\xe9*\n")
    [pattern] = read_pattern_files([str(patterns)])
    assert pattern == os.fsdecode(b"caf\xe9*")
    assert Excludes([pattern]).match(os.fsdecode(b"d/caf\xe9.txt"), False)
    with pytest.raises(UsageError, match="not a pattern file"):
        read_pattern_files(["/dev/zero"])
