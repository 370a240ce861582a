"""Run the ``vmkeep`` CLI with a deterministic kill -9: ``python -m tests.security.crash_runner
HOOK N vmkeep-args…`` sends SIGKILL to its own process at the ``N``-th call of ``HOOK``.

A test-only hook (nothing in vmkeep reads it): it wraps one function of the restore code in
this process before the CLI starts, so the process dies at an exact point of its work — never
"sleep, then kill".  Hooks:

=========  ==========================================================================
publish    ``restore files``: before the N-th complete temporary gets its final name
flush      ``restore files``: before the N-th batch is filled (its temporaries are empty)
range      ``restore files``: before the N-th pack range is written into the temporaries
extent     ``restore image``: before the N-th ``pwrite`` of restored data
replace    ``restore image``: before the complete, fsync'ed temporary is renamed
=========  ==========================================================================
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from typing import Any

HOOKS = {
    "publish": ("vmkeep.disks.safe_restore", "_Restorer", "publish"),
    "flush": ("vmkeep.disks.safe_restore", "_Restorer", "flush"),
    "range": ("vmkeep.guestfiles.tree", "PointTree", "_range"),
    "extent": ("vmkeep.storage.disk_restore", None, "_pwrite_all"),
    "replace": ("vmkeep.storage.disk_restore", None, "_replace"),
}


def install(hook: str, nth: int) -> None:
    module_name, owner_name, attr = HOOKS[hook]
    module = importlib.import_module(module_name)
    owner: Any = getattr(module, owner_name) if owner_name else module
    original = getattr(owner, attr)
    lock, calls = threading.Lock(), [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
                threading.Event().wait()  # never returns: the signal is on its way
        return original(*args, **kwargs)

    setattr(owner, attr, wrapper)


def main() -> None:
    hook, nth, *args = sys.argv[1:]
    os.environ["PREFECT_API_URL"] = ""  # direct mode, as the CLI without a Prefect API
    install(hook, int(nth))
    from vmkeep.cli.main import main as cli_main

    sys.argv = ["vmkeep", *args]
    cli_main()


if __name__ == "__main__":
    main()
