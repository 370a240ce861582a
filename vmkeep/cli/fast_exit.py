"""Leave a process that ran a job through Prefect without tearing Prefect down.

Once a CLI run's last ``atexit`` handler has run, what remains of the process's exit is the
interpreter's finalization: freeing the several thousand modules a Prefect run imports, which
took 0.3–0.4 s of an orchestrated one-VM backup (0.1 s for a direct one).  Nothing of the run
is left by then: the flow run's final state and its report artifacts were sent synchronously
before the flow returned; Prefect drains its events and log workers in ``threading``'s exit
hooks, which run before any ``atexit`` handler; the other ``atexit`` handlers run before this
one (registered first, so it runs last).  :func:`install` registers the handler at the CLI's
start; :func:`leave` records the exit code.  The handler then flushes what is left (logging,
``weakref.finalize`` callbacks marked ``atexit`` — a repository lock's lease —, stdout, stderr)
and ends the process with ``os._exit(code)``; for any process that ran no job through Prefect
it does nothing, and Python exits as usual.

What is skipped is only what finalization would still do: objects' ``__del__`` and the
flushing of files left open (vmkeep closes what it writes in ``with`` blocks; its repository
lock leases are ``weakref.finalize`` callbacks, run here).
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


def _orchestrated() -> bool:
    run = sys.modules.get("vmkeep.flows.run")
    return bool(getattr(run, "ORCHESTRATED", False))


def _finish() -> None:
    code = _state.get("code")
    if code is None or not _orchestrated():
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
