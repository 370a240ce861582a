"""Standard output that fails (a full disk behind ``> file``, an I/O error) as a typed error.

:func:`guarded_stdout` puts a thin proxy in ``sys.stdout`` for one command: a ``write`` or
``flush`` that raises ``OSError`` raises :class:`OutputFailed` instead (exit 15, one line, no
traceback — restic says "write: no space left on device" the same way).  A reader that went
away (``BrokenPipeError``, ``vmkeep list | head``) stays as it is: the command ends as before.
Everything else — ``isatty``, ``fileno``, ``encoding``, ``buffer`` — is the real stream's, so rich,
click and typer see the terminal or file they always saw.  The proxy is taken out again
afterwards (an in-process caller's own ``sys.stdout`` comes back).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from vmkeep.errors import VmkeepError


class OutputFailed(VmkeepError):
    """Cannot write to standard output: {}"""

    exit_code = 15


class _Guarded:
    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        try:
            return self._inner.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputFailed(exc.strerror or str(exc)) from None

    def flush(self) -> None:
        try:
            self._inner.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputFailed(exc.strerror or str(exc)) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def guarded_stdout() -> Iterator[None]:
    """``sys.stdout`` guarded for the duration (see the module docstring)."""
    inner = sys.stdout
    sys.stdout = _Guarded(inner)
    try:
        yield
    finally:
        sys.stdout = inner
