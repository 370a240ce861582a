"""The one-line summary of ``vmkeep restore files`` names everything it restored."""

from __future__ import annotations

import pytest

from vmkeep.cli.restore_files import _print_summary


def test_links_are_counted(capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary({"files": 0, "dirs": 0, "symlinks": 1, "hardlinks": 2, "bytes": 0,
                    "duration_s": 0.0, "skipped": []}, "/target")
    err = capsys.readouterr().err
    assert "restored 0 file(s), 0 folder(s), 1 symlink(s), 2 hard link(s), 0 B to /target" in err


def test_no_links_no_mention(capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary({"files": 3, "dirs": 1, "symlinks": 0, "bytes": 10, "duration_s": 0.0,
                    "skipped": []}, "/t")
    err = capsys.readouterr().err
    assert "restored 3 file(s), 1 folder(s), 10 B to /t" in err and "link" not in err
