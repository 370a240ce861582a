"""Kill a vmkeep process at an exact commit step (see :mod:`vmkeep.storage.crash_points`).

:func:`run_until_killed` starts a command with a crash point armed, waits for the process to park
there (its marker file appears), and kills it with SIGKILL: the kill lands at the intended step on
any machine, fast or loaded.  The deadline only stops a test whose process hangs; it measures
nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vmkeep.storage.crash_points import ENV_AT, ENV_MARKER

DEADLINE_S = 900.0


def run_until_killed(
    cmd: Sequence[str], step: str, nth: int, env: dict[str, str], marker_dir: Path
) -> str:
    """Run ``cmd`` until it reaches ``step`` for the ``nth`` time, then kill -9 it.

    Returns the marker's content.  Fails if the process exits without reaching the step.
    """
    marker = marker_dir / f"crash-{step}-{nth}-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        list(cmd),
        env={**env, ENV_AT: f"{step}:{nth}", ENV_MARKER: str(marker)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(
                    f"{step}:{nth} never reached (exit {proc.returncode}): {proc.stderr.read()}"  # type: ignore[union-attr]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{step}:{nth} not reached within {DEADLINE_S:.0f} s (hung?)")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        return marker.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


#: ``python -c`` this with ``REPO STEP N REPACK_BELOW``: prune ``REPO`` with no grace and kill
#: itself -9 right after the ``N``-th ``STEP`` (:func:`vmkeep.storage.prune.prune`'s ``step``
#: callback); exits 3 when the step never came (nothing to do there)
PRUNE_KILLER = """
import os, signal, sys
from datetime import timedelta
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

target, nth, seen = sys.argv[2], int(sys.argv[3]), []

def step(name):
    if name == target:
        seen.append(name)
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)

prune(Repository.open(sys.argv[1]), grace=timedelta(0), repack_below=float(sys.argv[4]),
      step=step)
sys.exit(3)  # the step was never reached
"""


def prune_until_killed(location: str, step: str, nth: int, repack_below: float) -> bool:
    """Prune the repository at ``location`` (its password from the environment) until it has
    done ``step`` for the ``nth`` time, then kill -9 it.  ``True`` when it was killed there,
    ``False`` when it finished without reaching the step; anything else fails."""
    proc = subprocess.run(
        [sys.executable, "-c", PRUNE_KILLER, location, step, str(nth), str(repack_below)],
        capture_output=True,
        timeout=DEADLINE_S,
    )
    assert proc.returncode in (-signal.SIGKILL, 3), (proc.returncode, proc.stderr[-2000:])
    return proc.returncode == -signal.SIGKILL
