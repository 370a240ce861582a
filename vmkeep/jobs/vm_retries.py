"""Retrying failed VM backups, as Veeam's "automatic retry" does: a VM whose backup failed is
backed up again after a pause, up to ``retries`` more times.

* ``backup vm`` (one VM) retries its own backup; ``backup vms`` retries once per pass: after
  every VM has had its attempt, the ones that failed wait ``retry_wait_s`` together and run
  again (the child backups of a many-VM run never retry on their own).
* Command line runs do not retry unless asked (``--retries N``, ``--retry-wait S``), like
  Veeam's manually started jobs; the scheduled ``nightly-*`` deployments retry 3 times,
  10 minutes apart.
* What waiting cannot mend is not retried: a usage error (exit code 2), bad input (14), a
  licence refusal (17), a VM that is not found, a host whose licence forbids API writes, a VM
  the backup window left out, an interrupted commit (``vmkeep/jobs/commit.py``: never retried —
  it may have landed); nor is a retry made whose pause ends after the window.  A
  stop signal or Ctrl-C ends the run at once, pause included.

Each retry is a whole new backup attempt: a new snapshot, its own release; what a failed
attempt left (a snapshot its release could not remove) is named in that attempt's error and
removed by the sweep.  The pause goes through :class:`vmkeep.retry.RetryPolicy` (``time.sleep``
looked up at call time: tests replace it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from vmkeep.errors import VmkeepError
from vmkeep.jobs.backup_window import BackupWindowEnded
from vmkeep.jobs.commit import CommitInterrupted
from vmkeep.retry import RetryPolicy
from vmkeep.runtime.base import Runtime
from vmkeep.vsphere.errors import LicenceRestricted, NotFound

#: exit codes of errors a pause cannot mend: usage, bad input, licence
PERMANENT_EXIT_CODES = frozenset({2, 14, 17})


def policy(retries: int, wait_s: float) -> RetryPolicy:
    """The pause policy of a run: ``retries`` retries, ``wait_s`` apart."""
    return RetryPolicy(retries=retries, delay_s=wait_s, backoff=1.0, cap_s=max(wait_s, 0.0))


def worth_retrying(exc: BaseException) -> bool:
    """Whether another attempt after a pause may succeed where ``exc`` ended this one."""
    if not isinstance(exc, Exception):
        return False  # stop signals, Ctrl-C
    if isinstance(exc, NotFound | LicenceRestricted | BackupWindowEnded | CommitInterrupted):
        return False
    return not (isinstance(exc, VmkeepError) and exc.exit_code in PERMANENT_EXIT_CODES)


def pause_before_retry(
    rt: Runtime, rules: RetryPolicy, retry: int, failed: Sequence[tuple[str, str]]
) -> None:
    """Log retry ``retry`` (1-based) of ``failed`` ``(VM, error)`` pairs, then pause."""
    wait = rules.delay(retry)
    names = ", ".join(name for name, _ in failed)
    rt.log.warning("retry %d of %d for %d VM(s) in %.0f s: %s", retry, rules.retries,
                   len(failed), wait, names)
    for name, error in failed:
        rt.log.warning("%s: attempt %d failed: %s", name, retry, error)
    time.sleep(wait)


def message_of(exc: BaseException) -> str:
    """The one-line message of a failed attempt."""
    return exc.get_message() if isinstance(exc, VmkeepError) else repr(exc)
