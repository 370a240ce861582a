"""pytest ends with the session's own exit status, and the stacks of what hung, when something
keeps it alive after its summary (the watchdog in ``tests/conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("fail", "status"), [("", 0), ("1", 1)])
def test_a_hung_exit_ends_with_the_session_status(fail: str, status: int) -> None:
    env = {**os.environ, "VMKEEP_TEST_EXIT_GRACE_S": "2", "HANG_PROBE_FAIL": fail}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/support/hang_probe.py"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert "still running 2 s after its summary" in proc.stderr
    assert "never-ends" in proc.stderr or "Thread 0x" in proc.stderr
