"""Every ``vmkeep …`` command line in the README and docs/ names commands and options that
exist: a group is followed by one of its subcommands (or goes to its default one), and each
``--option`` belongs to the command (or to the root).  Documentation drifts from the CLI
silently otherwise."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import typer.main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```[a-z]*\n(.*?)```", re.S)
#: docs/cli.md holds --help output, not command lines
SKIP = {"cli.md"}


def command_lines(text: str) -> list[str]:
    """``vmkeep …`` segments of the shell lines in fenced blocks (continuations joined, comments
    and prompts dropped, split at ``&&``, ``;`` and ``|``)."""
    out = []
    for block in BLOCK.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip()).removeprefix("$ ")
            for segment in re.split(r"&&|;|\|", line):
                segment = segment.strip()
                if segment.startswith("vmkeep "):
                    out.append(segment)
    return out


def check(root: Any, line: str) -> str | None:
    """The first thing wrong with ``line``, or ``None``.  ``root``: the CLI's command tree
    (typer's click objects: a group has ``commands``)."""
    try:
        words = shlex.split(line)[1:]
    except ValueError:
        return None  # an example with an unbalanced quote placeholder
    command = root
    path: list[str] = []
    root_options = {o: p for p in root.params for o in p.opts}
    skip = False
    for word in words:
        if skip:  # the value of a root option (`vmkeep --limit-upload 10240 copy …`)
            skip = False
            continue
        if command is root and word.split("=")[0] in root_options:
            skip = "=" not in word and not getattr(root_options[word], "is_flag", False)
            continue
        if not hasattr(command, "commands") or word.startswith("-"):
            break
        sub = command.commands.get(word)
        default = getattr(command, "default_command", None)  # instant-restore POINT → start
        if sub is None and default is not None:
            command, path = command.commands[default], [*path, default]
            break
        if sub is None:
            return f"`vmkeep {' '.join(path)}` has no command {word!r}"
        command, path = sub, [*path, word]
    known = {"--help"} | {o for p in root.params for o in p.opts}
    for param in command.params:
        known.update(param.opts)
        known.update(getattr(param, "secondary_opts", []))
    for word in words:
        if word.startswith("--") and word.split("=")[0] not in known:
            return f"`vmkeep {' '.join(path)}` has no option {word.split('=')[0]}"
    return None


def test_documented_command_lines_exist() -> None:
    from vmkeep.cli.main import app, register_all

    register_all()
    root = typer.main.get_command(app)
    problems = []
    checked = 0
    for doc in DOCS:
        if doc.name in SKIP:
            continue
        for line in command_lines(doc.read_text()):
            checked += 1
            if (problem := check(root, line)) is not None:
                problems.append(f"{doc.relative_to(ROOT)}: {problem}: {line}")
    assert checked > 50  # the docs were read
    assert not problems, "\n".join(problems)
