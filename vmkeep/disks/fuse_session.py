"""Serve an ``mfusepy`` file system until unmounted, with one outcome whichever libfuse is loaded.

Why not just ``mfusepy.FUSE(...)``: what it returns after a Ctrl-C depends on the libfuse it
finds.  mfusepy loads libfuse 2 when ``libfuse2`` is installed (``find_library('fuse')`` comes
first) and libfuse 3 otherwise.  Both install SIGINT/SIGTERM/SIGHUP handlers that end the loop and
unmount, but libfuse 3 (3.13 and later; Debian 12 ships 3.14) also stores the signal number as the
session's error, so ``fuse_main_real`` returns 8 ("the loop failed") and mfusepy raises
``RuntimeError(8)`` after a perfectly clean unmount; libfuse 2 returns 0 — or 1 when its read
of the detached device meets ``ECONNABORTED`` (a file still open when the mount was detached;
seen once in CI), which after our own unmount is an end, not a failure.  A machine where
``libfuse2`` was installed by hand therefore exited 0 and a fresh Debian machine exited 1 with a
traceback.

Contract of :func:`serve` (call it from the main thread: it installs signal handlers):

- The FUSE loop runs on a worker thread that blocks SIGINT, SIGTERM and SIGHUP; the main thread
  holds Python handlers for them, so libfuse installs none of its own (it only replaces
  ``SIG_DFL``) and its return code never encodes a signal.
- A SIGINT, SIGTERM or SIGHUP to the process unmounts (``fusermount3 -u -z``: lazy, like libfuse's
  own handler, so a busy mount is detached at once); the loop then sees the unmount and ends.  A
  signal that arrives before the mount is up unmounts as soon as it is.  If files are still open
  in the detached mount the loop serves them until they are closed; a second signal stops waiting.
- An unmount from outside (``fusermount3 -u``, ``umount``) ends the loop the same way.
- In all these cases :func:`serve` returns normally and restores the previous signal handlers.
  A loop that ends by itself while the kernel still lists the mount (an error) is unmounted
  too: :func:`serve` never leaves a mount behind whose server is gone.
- A mount that cannot be made (libfuse's ``fuse_main_real`` codes 1-7), or a loop that ends in an
  error nobody asked for, raises :class:`~vmkeep.disks.errors.FuseMountError` (exit code 19).
  libfuse prints its own reason on stderr before that.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from vmkeep.disks.errors import FuseMountError, MountPointError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: libfuse 3's ``fuse_main_real`` return codes (``lib/helper.c``); libfuse 2 returns 1 for every
#: failure, so with it the reason is only what libfuse printed on stderr.
LIBFUSE3_CODES = {
    1: "bad FUSE options",
    2: "no mount point",
    3: "could not create the FUSE session",
    4: "the kernel refused the mount (is /dev/fuse usable, and may this user mount here?)",
    5: "could not daemonize",
    6: "could not install signal handlers",
    7: "could not configure the FUSE loop",
    8: "the FUSE loop ended in an error",
}

_MOUNTED, _ENDED, _SIGNAL = "mounted", "ended", "signal"


def serve(make_fuse: Callable[[], Any], ops: Any, mountpoint: str, libfuse_major: int) -> None:
    """Run ``make_fuse()`` (a call of ``mfusepy.FUSE(ops, mountpoint, ...)``) until unmounted.

    ``ops`` is the ``mfusepy.Operations`` instance passed to it: its ``init`` is wrapped to learn
    when the mount is up.  ``libfuse_major`` (2 or 3, ``mfusepy.fuse_version_major``) says how to
    read libfuse's return code.  See the module docstring for signals, unmounts and errors.
    """
    events: queue.SimpleQueue[str] = queue.SimpleQueue()  # put() is reentrant
    _notify_when_mounted(ops, lambda: events.put(_MOUNTED))
    outcome: list[BaseException] = []

    def loop() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            make_fuse()
        except BaseException as exc:  # handed to the main thread
            outcome.append(exc)
        finally:
            events.put(_ENDED)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        events.put(_SIGNAL)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    stopped = False
    try:
        worker = threading.Thread(target=loop, name="fuse-loop", daemon=True)
        worker.start()
        mounted = unmounting = False
        while True:
            kind = events.get()
            if kind == _ENDED:
                break
            if kind == _MOUNTED:
                mounted = True
            elif kind == _SIGNAL:
                if unmounting:  # a second signal: stop waiting for files still open
                    return
                stopped = True
            if stopped and mounted and not unmounting:
                unmounting = True
                _unmount(mountpoint)
        worker.join()
        if mounted and not unmounting and _still_mounted(mountpoint):
            _unmount(mountpoint)  # the loop ended on its own (an error): no mount left behind
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if outcome:
        _raise_failure(outcome[0], mountpoint, stopped, libfuse_major)


def _notify_when_mounted(ops: Any, notify: Callable[[], None]) -> None:
    """Wrap ``ops.init`` (libfuse calls it once the kernel's INIT arrives, i.e. once mounted)."""
    original = ops.init

    def init(path: str) -> Any:
        try:
            return original(path)
        finally:
            notify()

    ops.init = init


def _still_mounted(mountpoint: str) -> bool:
    """Whether the kernel still lists a mount at ``mountpoint`` (``os.path.ismount`` cannot
    tell: a FUSE mount whose server is gone fails every ``stat`` with ENOTCONN)."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
            points = [line.split()[1] for line in f if len(line.split()) > 1]
    except OSError:
        return False
    # the kernel writes space, tab, newline and backslash in octal (\040 …)
    return target in {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points}


def _unmount(mountpoint: str) -> None:
    """Detach the mount (lazily, as libfuse's own signal handler does); errors are ignored:
    if it is already gone the loop has ended or is ending."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        subprocess.run([tool, "-u", "-z", mountpoint], capture_output=True, check=False)
    else:  # pragma: no cover - fuse3 is a dependency; root can still unmount
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)


def _raise_failure(exc: BaseException, mountpoint: str, stopped: bool, libfuse_major: int) -> None:
    if isinstance(exc, RuntimeError) and len(exc.args) == 1 and isinstance(exc.args[0], int):
        code = exc.args[0]
        if stopped and (code == 8 if libfuse_major >= 3 else code == 1):
            return  # we asked the loop to end (libfuse 2 may then read ECONNABORTED and say 1)
        reason = LIBFUSE3_CODES.get(code) if libfuse_major >= 3 else None
        reason = reason or f"libfuse {libfuse_major} returned {code} (its reason is printed above)"
        raise FuseMountError(mountpoint, reason) from None
    if isinstance(exc, OSError):
        raise FuseMountError(mountpoint, exc.strerror or str(exc)) from None
    raise exc


def check_mountpoint(mountpoint: str) -> None:
    """Refuse a mount folder that is missing, not a directory, or not empty, and a machine
    without ``/dev/fuse`` (typed errors, one line each)."""
    if not os.path.isdir(mountpoint):
        reason = "it is not a directory" if os.path.exists(mountpoint) else "it does not exist"
        raise MountPointError(mountpoint, reason)
    if os.listdir(mountpoint):
        raise MountPointError(mountpoint, "it is not empty")
    if not os.path.exists("/dev/fuse"):
        raise FuseMountError(mountpoint, "/dev/fuse is missing (load the fuse kernel module)")
