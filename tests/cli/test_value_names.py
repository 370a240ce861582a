"""``--help`` names values as restic's and borg's users read them (``--exclude PATTERN``,
``--keep-last N``, ``{SOURCE}``), never by typer's Python types (``<list[str]>``)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

#: How typer spells a value's Python type in help: ``<str>``, ``<int range>``, ``<list[str]>``.
PYTHON_TYPE = re.compile(r"<(str|int|float|Path|path|bool|list\[|tuple|datetime)[^>]*>")


def _commands():
    from vmkeep.cli.main import register_all, root_command

    register_all()
    stack = [(root_command(), ["vmkeep"])]
    while stack:
        command, path = stack.pop()
        yield command, path
        for name, sub in getattr(command, "commands", {}).items():
            stack.append((sub, [*path, name]))


def test_no_help_shows_a_python_type() -> None:
    seen = 0
    for command, path in _commands():
        ctx = command.context_class(command, info_name=" ".join(path), terminal_width=200)
        text = command.get_help(ctx)
        assert not PYTHON_TYPE.search(text), (path, PYTHON_TYPE.findall(text))
        seen += 1
    assert seen > 50


@pytest.mark.parametrize(
    ("flag", "expected"),
    [("--exclude", "PATTERN"), ("--keep-within", "DURATION"), ("--password-file", "FILE"),
     ("--resource-pool", "RESOURCE_POOL")],
)
def test_names(flag: str, expected: str) -> None:
    named = {
        p.metavar for command, _ in _commands() for p in command.params if flag in p.opts
    }
    assert expected in named, named


def test_numbers_and_flags() -> None:
    params = {p.opts[0]: p for command, path in _commands() if path[1:] == ["forget"]
              for p in command.params if p.opts}
    assert params["--keep-last"].metavar == "N"
    assert params["--dry-run"].metavar is None  # a flag takes no value


def test_the_command_line_shows_them_and_parses_as_before() -> None:
    """Through the console script: the help, and an error naming the argument as shown."""
    help_text = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "backup", "files", "--help"],
        capture_output=True, text=True, timeout=120, env={"COLUMNS": "120", "PATH": "/usr/bin"},
    ).stdout
    assert "{SOURCE}" in help_text and "-e, --exclude PATTERN" in help_text, help_text
    assert "--exclude-file FILE" in help_text and "<" not in help_text, help_text
    missing = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "backup", "files", "--name", "n"],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "Missing argument 'SOURCE'" in missing.stderr
