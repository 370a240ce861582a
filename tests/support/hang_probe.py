"""Run by ``tests/test_exit_watchdog.py`` as its own pytest session (not collected otherwise):
one test that passes or fails (``HANG_PROBE_FAIL``) and leaves a non-daemon thread that never
ends, as a Prefect drain or a forgotten worker would."""

import os
import threading


def test_leaves_a_thread_behind() -> None:
    threading.Thread(target=threading.Event().wait, name="never-ends", daemon=False).start()
    assert not os.environ.get("HANG_PROBE_FAIL")
