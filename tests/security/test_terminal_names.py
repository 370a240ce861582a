"""Finding 6 (names): names are never rich markup or terminal escapes, anywhere in the CLI.

A restore point named ``web[/b]`` used to make ``vmkeep list`` raise ``rich.errors.MarkupError``
forever; a file named with escape sequences was written raw to the terminal by ``vmkeep ls``.
Names are now printed as they are, with control characters made visible (``\\x1b``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.security.conftest import vmkeep
from tests.storage.storage_helpers import backup
from vmkeep.cli.common import visible
from vmkeep.storage.repository import Repository

ESC_TITLE = "evil\x1b]0;pwned\x07\x1b[2J"  # retitles the terminal, clears the screen


def assert_no_raw_controls(text: str) -> None:
    assert not any((ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 for c in text), text


def test_visible_escapes_controls_unambiguously() -> None:
    assert visible("web[/b]") == "web[/b]"
    assert visible("a\x1b[31mb") == "a\\x1b[31mb"
    assert visible("line\nbreak") == "line\\x0abreak"
    assert visible("rtl\u202eexe.txt") == "rtl\\u202eexe.txt"
    assert visible("byte\udcff") == "byte\\xff"  # surrogateescape'd undecodable byte
    assert visible("back\\slash") == "back\\\\slash"  # so "\\x1b" typed literally is distinct
    assert visible("café ✓") == "café ✓"


def test_list_prints_markup_like_and_escape_names(
    repo: Repository, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: the table never wraps a name
    backup(repo, image, name="web[/b]")
    backup(repo, image, name=ESC_TITLE)
    out = vmkeep("list", repo=repo.backend.location)
    assert out.returncode == 0, out.stderr
    assert "web[/b]" in out.stdout and "MarkupError" not in out.stderr
    assert "evil\\x1b]0;pwned\\x07" in out.stdout
    assert_no_raw_controls(out.stdout + out.stderr)
    listed = json.loads(vmkeep("list", "--json", repo=repo.backend.location).stdout)
    assert {p["name"] for p in listed["points"]} == {"web[/b]", ESC_TITLE}  # JSON keeps names


def test_names_are_never_emoji_codes(repo: Repository, image: Path) -> None:
    """rich turns ``:a:`` into 🅰 unless told not to: ``forget`` printed ``image:a:b`` as
    ``image🅰b``."""
    backup(repo, image, name="a:b")
    backup(repo, image, name=":smile:")
    for args in (["forget", "--keep-last", "1", "--dry-run"], ["list"]):
        out = vmkeep(*args, repo=repo.backend.location)
        said = out.stdout + out.stderr
        assert "a:b" in said and ":smile:" in said and "🅰" not in said and "😄" not in said, said


def test_ls_escapes_file_names_and_link_targets(repo: Repository, tmp_path: Path) -> None:
    from vmkeep.guestfiles.backup import commit_file_point
    from vmkeep.guestfiles.local import LocalSource
    from vmkeep.storage.file_backup import backup_files

    src = tmp_path / "src"
    src.mkdir()
    (src / ESC_TITLE).write_bytes(b"x")
    (src / "[red]markup[\\red]").write_bytes(b"y")
    os.symlink("\x1b[2Jtarget", src / "link")
    result = backup_files(repo, LocalSource(src), None)
    point = commit_file_point(repo, "tree", result, source=str(src), client="t")
    point_id = point if isinstance(point, str) else point.id
    out = vmkeep("ls", f"{point_id[:12]}:/", repo=repo.backend.location)
    assert out.returncode == 0, out.stderr
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in out.stdout
    assert "[red]markup[\\\\red]" in out.stdout and "-> \\x1b[2Jtarget" in out.stdout
    assert_no_raw_controls(out.stdout + out.stderr)


def test_skipped_lists_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from vmkeep.cli.restore_files import _print_summary

    _print_summary(
        {"files": 1, "dirs": 0, "bytes": 1, "duration_s": 0.1,
         "skipped": [{"path": f"/d/{ESC_TITLE}", "reason": "unsafe-name", "detail": "\x1b[1m"}]},
        "/target",
    )
    err = capsys.readouterr().err
    assert "skipped /d/evil\\x1b]0;pwned\\x07" in err and "\\x1b[1m" in err
    assert_no_raw_controls(err)


def test_error_messages_are_escaped(repo: Repository) -> None:
    out = vmkeep("ls", "\x1b[2Jnope", repo=repo.backend.location)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert_no_raw_controls(out.stderr)


def test_log_lines_and_lock_reports_are_escaped(repo: Repository) -> None:
    lock = {"format": "vmkeep-lock", "kind": "shared", "hostname": "h", "pid": 1,
            "created": "\x1b[2J", "refreshed": "\x1b]0;pwned\x07"}
    path = Path(repo.backend.location, "locks", "e" * 32)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(lock, ensure_ascii=False))
    out = vmkeep("unlock", repo=repo.backend.location)
    assert out.returncode == 0, out.stderr
    assert "unreadable lock" in out.stderr and "\\x1b[2J" in out.stderr
    assert_no_raw_controls(out.stdout + out.stderr)
