"""Typed errors shared by every layer, each with its message, exit code and retry policy.

Modelled on borg's ``helpers/errors.py``: the class docstring's first line is the message template
(``str.format`` with the constructor's arguments), ``exit_code`` is what the CLI exits with, and
``is_transient`` tells Prefect's ``retry_condition_fn`` (and the storage retry wrapper) whether a
retry may help.  User errors print one line and no traceback; ``traceback = True`` marks internal
errors where a traceback helps a bug report.

Exit codes (stable; scripts depend on them):

====  ==========================================================
0     success
1     fatal error not covered below
2     usage error (bad flags; also raised by the CLI parser)
3     partial success: some source files could not be read
10    repository missing or not a vmkeep repository
11    repository locked by another process
12    wrong password or key
13    repository damaged: missing or corrupt data
14    bad input: missing, unreadable or malformed source
15    target error: full, unreachable, or permission denied
16    vSphere error: connection, authentication, API fault
17    licence refuses the operation
18    repository rolled back: restore points this client saw are gone without a tombstone, or
      the repository's config changed (client-side state; ``check --accept-rollback``)
19    FUSE could not mount, or stopped serving (``vmkeep mount``)
20    releasing a repository lock hung: its refresh write did not finish (``LockReleaseHung``)
21    the Prefect API cannot be reached (an orchestrated run; ``serve --api-url``)
130   interrupted (Ctrl-C)
====  ==========================================================
"""

from __future__ import annotations

import socket
from typing import Any, ClassVar


class VmkeepError(Exception):
    """Error: {}"""

    exit_code: ClassVar[int] = 1
    traceback: ClassVar[bool] = False
    is_transient: ClassVar[bool] = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.args = args

    def get_message(self) -> str:
        template = (type(self).__doc__ or "Error: {}").strip().splitlines()[0]
        try:
            return template.format(*self.args)
        except (IndexError, KeyError):
            return " ".join([template, *map(str, self.args)])

    def __str__(self) -> str:
        return self.get_message()


class UsageError(VmkeepError):
    """{}"""

    exit_code = 2


class PartialBackup(VmkeepError):
    """Backup finished, but {} item(s) could not be read."""

    exit_code = 3


class InputError(VmkeepError):
    """Bad input: {}"""

    exit_code = 14


class PrefectApiUnreachable(VmkeepError):
    """Cannot reach the Prefect API at {}: {} ({})

    An orchestrated run, or ``serve --api-url``, found no Prefect server answering; nothing was
    run through it (a run it lost midway may have done some of its work: its report says)."""

    exit_code = 21


def is_transient(exc: BaseException) -> bool:
    """True when retrying the operation that raised ``exc`` may succeed."""
    return isinstance(exc, VmkeepError) and exc.is_transient


def network_reason(exc: BaseException) -> str | None:
    """A failed connection's cause in a user's words — cannot resolve the host name, connection
    refused, timed out, connection reset — or None for another cause (the caller says it its
    own way).  Used for repository targets, vCenter and iSCSI portals alike."""
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name"
    causes = getattr(exc, "errors", None)  # paramiko's NoValidConnectionsError: per address
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(causes, dict) and causes
        and all(isinstance(c, ConnectionRefusedError) for c in causes.values())
    ):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP asked the command to stop (systemd stopping a unit, ``timeout``, a
    closed terminal, ``kill``).

    Raised in the main thread by the CLI's signal handler, as Ctrl-C raises
    ``KeyboardInterrupt`` — a subclass of it, so that every cleanup Ctrl-C runs (the snapshot
    release, lock release, the job report) runs for these signals too.  Exit code ``128 +
    signum`` (143 for SIGTERM, 129 for SIGHUP), as a shell reports a process the signal ended."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
