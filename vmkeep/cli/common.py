"""Shared CLI plumbing: options every verb accepts, output, progress and error handling.

Conventions (restic/borg users know them): ``--repo`` or ``VMKEEP_REPO``; passwords only from the
environment or a file, never argv; ``--json`` prints exactly one JSON object on stdout and nothing
else there; human output and progress go to stderr; user errors print one line, no traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console

from vmkeep.errors import VmkeepError

#: Width of output that is not a terminal (a pipe, a file, a log): rich would wrap it at 80
#: columns, splitting a `find` match or a summary over lines that `grep` then misses.
UNWRAPPED = 1 << 14


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class SafeConsole(Console):
    """A rich console that never interprets text: markup is off (a point named ``web[/b]`` is a
    name, not a style; colour is asked for with ``style=``), emoji codes are off (a name
    ``a:b`` printed as ``image:a:b`` is not ``image🅰b``), output that is not a terminal is
    not wrapped (:data:`UNWRAPPED`; ``COLUMNS`` still decides when set) and every ``str``
    printed has its control characters except newlines made visible (:func:`visible`), whatever
    the caller forgot.  Names should still go through :func:`visible` themselves, which escapes
    newlines too (a name must not start a line that looks like vmkeep's own output)."""

    def __init__(self, **kw: Any) -> None:
        stream = sys.stderr if kw.get("stderr") else sys.stdout
        if "width" not in kw and "COLUMNS" not in os.environ and not _is_terminal(stream):
            kw["width"] = UNWRAPPED  # a pipe or a file: one line stays one line, as restic's
        super().__init__(highlight=False, markup=False, emoji=False, **kw)

    def print(self, *objects: Any, **kw: Any) -> None:
        shown = [_visible_lines(o) if isinstance(o, str) else o for o in objects]
        super().print(*shown, **kw)


class _VisibleFormatter(logging.Formatter):
    """Log lines with control characters made visible (they may quote repository content)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return _visible_lines(self.inner.format(record))


def _visible_lines(text: str) -> str:
    if text.isprintable():
        return text
    return "\n".join(visible(line, backslash=False) for line in text.split("\n"))


console_err = SafeConsole(stderr=True)
console_out = SafeConsole()


def visible(name: object, *, backslash: bool = True) -> str:
    """``name`` safe to print on a terminal, like ``ls -b``: every character that is not
    printable (C0/C1 controls such as ESC, DEL, bidirectional and other format characters, line
    separators, bytes kept as surrogates by ``surrogateescape``) becomes a visible escape —
    ``\\x1b``, ``\\u202e`` — and a backslash is doubled, so the output is unambiguous and never
    moves the cursor, changes colours or retitles the terminal.  JSON output needs none of this
    (``json.dumps`` escapes control characters itself).  ``backslash=False`` (messages, not
    names) leaves backslashes alone."""
    text = name if isinstance(name, str) else str(name)
    if text.isprintable() and not (backslash and "\\" in text):
        return text
    return "".join(
        ch if ch == "\\" and not backslash else _escape_char(ch) for ch in text
    )


def _escape_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch.isprintable():
        return ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

RepoOpt = Annotated[
    str,
    typer.Option("--repo", "-r", envvar="VMKEEP_REPO", help="Repository URL or path."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
VerboseOpt = Annotated[
    int, typer.Option("--verbose", "-v", count=True, help="More logging (-vv: Prefect's too).")
]


def given_path(value: str | Path) -> Path:
    """Option parser for a path: an empty or blank one — an unset variable in a script — is a
    usage error naming the option, where ``Path("")`` would quietly mean the current folder.
    typer passes an option's default through it too (a ``Path`` already: kept)."""
    return value if isinstance(value, Path) else Path(given_location(value))


def given_location(value: str) -> str:
    """:func:`given_path` for options kept as text (a path or a URL)."""
    if not value.strip():
        raise typer.BadParameter("an empty path (an unset variable?)")
    return value



def regular_expression(value: str) -> str:
    """Option parser for a Python regular expression: one that does not compile is a usage error
    naming the option (not a traceback once the job runs)."""
    import re

    try:
        re.compile(value)
    except re.error as exc:
        raise typer.BadParameter(f"not a regular expression: {exc}") from None
    return value


def above_zero(at_most: float) -> Callable[[float], float]:
    """Option callback for a number that must be more than 0 and at most ``at_most`` (a
    timeout, an age; :mod:`vmkeep.jobs.limits`): typer's ``min`` includes its bound, and lets
    ``nan`` and ``inf`` through to the job's spec, which would refuse them as bad input (exit
    14) instead of as a bad option (exit 2)."""

    def check(value: float) -> float:
        if not (math.isfinite(value) and 0 < value <= at_most):
            raise typer.BadParameter(
                f"{value:g} is not a number above 0 and at most {at_most:.15g}")
        return value

    return check


def setup_logging(verbose: int) -> None:
    """Warnings only by default; ``-v`` vmkeep's own info; ``-vv`` debug plus Prefect's and the
    HTTP libraries' logs."""
    root = logging.INFO if verbose >= 2 else logging.WARNING
    logging.basicConfig(level=root, format="%(levelname)s %(name)s: %(message)s", force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_VisibleFormatter(handler.formatter))
    logging.getLogger("vmkeep").setLevel(
        logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    )
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose >= 2 else "WARNING")


def emit_json(obj: Any) -> None:
    """Print ``obj`` as one JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()


def run_summarized(
    job: Callable[[Any, Any], dict[str, Any]],
    spec: Any,
    orchestrate: bool | None,
    json_out: bool,
    show: Callable[[dict[str, Any]], None],
    failed: type[Exception],
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Run ``job`` (:func:`vmkeep.flows.run.run`) and print its summary: one JSON document with
    ``--json``, else ``show(summary)``.  A ``failed`` error carries the summary of a run that
    did its work but must fail (``.summary``): it is printed the same way, then re-raised, so
    the exit code is the error's."""
    from vmkeep.flows.run import run

    def emit(summary: dict[str, Any]) -> None:
        if json_out:
            emit_json(summary)
        else:
            show(summary)

    try:
        result = run(job, spec, orchestrate, on_progress)
    except failed as exc:
        emit(exc.summary)  # type: ignore[attr-defined]
        raise
    emit(result)


def show_progress(enabled: bool = True) -> bool:
    """Progress bars only on an interactive terminal and never with --json."""
    return enabled and sys.stderr.isatty()


@contextmanager
def byte_progress(
    description: str, total: int | None, enabled: bool
) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(nbytes)`` callback drawing a bar on stderr when ``enabled``."""
    if not show_progress(enabled):
        yield lambda n: None
        return
    # imported here: rich's progress module is start-up time every quick verb would pay
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console_err,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def run_guarded(fn: Callable[[], Any]) -> int:
    """Run a click/typer invocation, turning errors into one-line messages and exit codes."""
    try:
        result = fn()
    except VmkeepError as exc:
        if exc.traceback:
            console_err.print_exception()
        console_err.print(f"vmkeep: {visible(exc.get_message(), backslash=False)}", soft_wrap=True)
        return exc.exit_code
    except (click.exceptions.Exit, typer.Exit) as exc:
        return int(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        console_err.print("aborted")
        return 130
    except _CLICK_ERRORS as exc:
        shown: Any = exc
        shown.show()  # one usage line, no traceback
        return int(shown.exit_code)
    return result if isinstance(result, int) else 0


def _click_errors() -> tuple[type[Exception], ...]:
    """Click's usage-error classes: click's own and typer's vendored copy, where it has one."""
    errors: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:  # older typer uses click itself
        pass
    else:
        errors.append(VendoredClickException)
    return tuple(errors)


_CLICK_ERRORS = _click_errors()


def require_repo(repo: str | None) -> str:
    """The repository URL, or a usage error naming both ways to give it (blanks alone are
    none: ``VMKEEP_REPO=" "`` made a repository in a folder named by a space)."""
    if not repo or not repo.strip():
        from vmkeep.errors import UsageError

        raise UsageError("no repository given: use --repo or set VMKEEP_REPO")
    from vmkeep.storage.secret_options import refuse_url_password

    refuse_url_password(repo, "--repo / VMKEEP_REPO")
    return repo


def repository_password() -> str | None:
    """The repository password from ``VMKEEP_PASSWORD``, ``VMKEEP_PASSWORD_FILE`` or
    ``VMKEEP_PASSWORD_COMMAND`` (never from argv); ``None`` when none is set."""
    from vmkeep.storage.crypto import password_from_env

    return password_from_env()


def open_repository(repo: str | None) -> Any:
    """Open the repository every verb works on (``--repo`` / ``VMKEEP_REPO``); the password of
    an encrypted one comes from :func:`repository_password`, asked only when needed."""
    from vmkeep.storage.repository import Repository

    return Repository.open(require_repo(repo), password=repository_password)


OrchestrateOpt = Annotated[
    bool | None,
    typer.Option(
        "--prefect/--no-prefect",
        help="Run as a Prefect flow (default: when a Prefect API URL is configured).",
        show_default=False,
    ),
]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
