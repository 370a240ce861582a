"""Test-only crash points: park a writer at an exact step of the commit order so a test can kill -9
it there, on any machine, fast or loaded (no sleeping and hoping the process is mid-way).

Nothing here runs unless a test sets ``VMKEEP_TEST_CRASH_AT``; unset, :func:`reached` returns at
once and the product behaves exactly as without it.  Never set it outside tests.

Contract, with ``VMKEEP_TEST_CRASH_AT=<step>:<n>`` and ``VMKEEP_TEST_CRASH_MARKER=<file>``:

- the ``n``-th time (counting from 1) this process reaches ``step``, it writes ``<file>``
  (atomically: temporary name, then rename; the content is ``"<step> <n> <pid>"``) and then
  blocks that thread forever;
- from then on every thread that reaches any crash point blocks as well, so the process makes no
  further commit step while the test kills it;
- the test waits for ``<file>`` to appear (polling with a generous deadline that only guards
  against a hang), then sends SIGKILL.

Steps, in the order a backup reaches them (see :mod:`vmkeep.storage.writer`):

``pack``      a pack was stored durably (one per pack; uploads run on several threads, so up to
              ``uploaders - 1`` other packs may complete while the process is parked)
``index``     a write session's index was stored durably; no manifest references it yet
``manifest``  a restore point's manifest was stored; the client has not yet recorded it or
              released its lock

and, for VM backups through the ``hotadd`` transport (:mod:`vmkeep.vsphere.hotadd`):

``hotadd-attached``  a snapshot disk was hot-added to the mover VM (and marked); not yet read

and, for restores:

``restore-piece``  a restore handed one piece of a disk to its upload (a chunk to the NFC stream
              of :mod:`vmkeep.vsphere.disk_stream`, or one read of the https PUT body): the VM
              exists, half written, marked incomplete

``rollback-write``  a quick rollback is about to rewrite one run of differing blocks of a VM's
              disk (:mod:`vmkeep.storage.disk_rollback`): CBT was reset, earlier runs are written

and for ``instant-restore`` (:mod:`vmkeep.browse.instant`):

``instant-created``  the VM exists on the export's NAS datastore, not yet in the run record

Prune has its own per-step callback (:func:`vmkeep.storage.prune.prune` ``step=``).
"""

from __future__ import annotations

import os
import threading

from vmkeep.settings import settings

ENV_AT = "VMKEEP_TEST_CRASH_AT"
ENV_MARKER = "VMKEEP_TEST_CRASH_MARKER"
STEPS = ("pack", "index", "manifest", "hotadd-attached", "restore-piece", "instant-created",
         "rollback-write")


def _plan_from_env() -> tuple[str, int, str] | None:
    spec = settings().test_crash_at
    if not spec:
        return None
    step, _, nth = spec.partition(":")
    marker = settings().test_crash_marker or ""
    if step not in STEPS or not nth.isdigit() or int(nth) < 1 or not marker:
        raise ValueError(f"{ENV_AT}={spec!r} wants STEP:N (STEP in {STEPS}) and {ENV_MARKER}")
    return step, int(nth), marker


_PLAN = _plan_from_env()
_lock = threading.Lock()
_counts: dict[str, int] = {}
_parked = threading.Event()


def reached(step: str) -> None:
    """Mark that this process just completed ``step``; a no-op unless a test armed a crash point."""
    if _PLAN is not None:
        _maybe_park(step, _PLAN)


def _maybe_park(step: str, plan: tuple[str, int, str]) -> None:
    target, nth, marker = plan
    with _lock:
        if not _parked.is_set():
            _counts[step] = _counts.get(step, 0) + 1
            if step != target or _counts[step] != nth:
                return
            tmp = f"{marker}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{step} {nth} {os.getpid()}")
            os.replace(tmp, marker)
            _parked.set()
    threading.Event().wait()  # parked until the test's SIGKILL
