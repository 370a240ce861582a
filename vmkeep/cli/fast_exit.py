"""Leave the ``vmkeep`` process without the interpreter's teardown once its command is done.

Once a CLI run's last ``atexit`` handler has run, what remains of the process's exit is the
interpreter's finalization: freeing every module and object left.  After an orchestrated run
that is the several thousand modules a Prefect run imports: 0.3–0.4 s of a one-VM backup.  After
a direct image backup it is the data path's heap and libraries: 40–80 ms of a 4 GiB backup's
4.5 s (docs/performance.md, "What a backup command costs besides the backup").  Nothing of the
run is left by then: an orchestrated flow run's final state and its report artifacts were sent
synchronously before the flow returned; Prefect drains its events and log workers, and
``concurrent.futures`` joins its worker threads, in ``threading``'s exit hooks, which run
before any ``atexit`` handler; the other ``atexit`` handlers run before this one (registered
first, so it runs last).  :func:`install` registers the handler at the CLI's start;
:func:`leave` records the exit code.  The handler then flushes what is left (logging,
``weakref.finalize`` callbacks marked ``atexit`` — a repository lock's lease, a
``tempfile.TemporaryDirectory`` —, stdout, stderr) and ends the process with
``os._exit(code)``.  Only the console script installs it: a caller running the CLI in-process
(tests) keeps its own exit.

What is skipped is only what finalization would still do: objects' ``__del__`` and the
flushing of files left open (vmkeep closes what it writes in ``with`` blocks; its repository
lock leases are ``weakref.finalize`` callbacks, run here).  If flushing fails (a closed pipe),
the handler returns and Python exits as usual.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import weakref

_state: dict[str, int] = {}


def install() -> None:
    """Register the exit handler (first thing in the CLI, so it runs after every other one)."""
    if not _state.get("installed"):
        atexit.register(_finish)
        _state["installed"] = 1


def leave(code: int) -> None:
    """The CLI is about to exit with ``code``."""
    _state["code"] = code


def _finish() -> None:
    code = _state.get("code")
    if code is None:
        return
    try:
        exitfunc = getattr(weakref.finalize, "_exitfunc", None)
        if exitfunc is not None:
            exitfunc()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        return  # let Python's own exit do it
    os._exit(code)
