"""vmkeep's mark on a VM it is still restoring, and the sweep that removes half-restored VMs.

While a restore runs, the new VM carries the ``extraConfig`` key :data:`MARK_KEY` whose value is
``"<run id>;<ISO time>;<host name>;<pid>"``.  The restore clears the key (sets it empty, which
removes it) only after every disk, the NVRAM and the settings are in place.  While it runs, a
:class:`MarkKeeper` rewrites the mark with the current time every ``interval`` (10 minutes), so a
restore longer than the sweep's age limit is never taken for a leftover (the time is the last
heartbeat; a refresh refused while an NFC lease holds the VM is harmless: the lease protects it).

:func:`sweep_half_restored` destroys a VM only if it carries the key with a well-formed value, its
run is not active, it is older than ``older_than`` and — when the mark names this machine — the
process that wrote it is gone.  VMs without the mark are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from vmkeep import clock
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.inventory import vm_properties
from vmkeep.vsphere.waiter import wait_for_task

MARK_KEY = "vmkeep.restore.incomplete"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreMark:
    run_id: str
    created: datetime
    host: str
    pid: int

    def value(self) -> str:
        return f"{self.run_id};{self.created.isoformat(timespec='seconds')};{self.host};{self.pid}"

    def in_use(self, active_runs: set[str] | frozenset[str], cutoff: datetime) -> bool:
        """Whether the run that wrote the mark may still be working: it is active, the mark is
        younger than ``cutoff``, or its process still runs on this machine."""
        return self.run_id in active_runs or self.created > cutoff or _alive_here(self)


def new_mark(run_id: str) -> RestoreMark:
    created = clock.now().replace(microsecond=0)
    return RestoreMark(run_id, created, socket.gethostname(), os.getpid())


def parse_mark(value: str | None) -> RestoreMark | None:
    parts = (value or "").split(";")
    if len(parts) != 4 or not parts[0] or not parts[3].isdigit():
        return None
    try:
        created = datetime.fromisoformat(parts[1])
    except ValueError:
        return None
    return RestoreMark(parts[0], created, parts[2], int(parts[3]))


def set_extra_config(session: Session, vm: Any, key: str, value: str, what: str) -> None:
    """Set ``vm``'s ``extraConfig`` ``key`` to ``value`` (an empty value removes the key)."""
    from pyVmomi import vim

    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=key, value=value)])
    wait_for_task(session, session.call(vm.ReconfigVM_Task, spec), what=what)


def clear_mark(session: Session, vm: Any) -> None:
    """Remove the mark: the VM is complete."""
    set_extra_config(session, vm, MARK_KEY, "", "unmark restored VM")


class MarkKeeper:
    """Refresh ``vm``'s mark every ``interval`` seconds until :meth:`stop` (module docstring)."""

    def __init__(self, session: Session, vm: Any, run_id: str, interval: float = 600.0) -> None:
        self.session, self.vm, self.run_id = session, vm, run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="restore-mark-keeper", daemon=True
        )
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            value = new_mark(self.run_id).value()
            try:
                set_extra_config(self.session, self.vm, MARK_KEY, value, "refresh restore mark")
            except Exception as exc:  # best effort; the restore goes on
                log.info("restore mark not refreshed: %s", exc)

    def stop(self) -> None:
        """Stop refreshing; returns once no refresh is in flight (so clearing the mark after
        this cannot be undone by a late refresh)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


def _alive_here(mark: RestoreMark) -> bool:
    """Whether ``mark`` names this machine and a process with its pid still runs here."""
    if mark.host != socket.gethostname():
        return False
    try:
        os.kill(mark.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class HalfRestoredReport:
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def sweep_half_restored(
    session: Session, older_than: timedelta, active_runs: set[str] | frozenset[str] = frozenset()
) -> HalfRestoredReport:
    """Destroy half-restored VMs vmkeep left behind (rules in the module docstring)."""
    cutoff = clock.now() - older_than
    report = HalfRestoredReport()
    for vm, props in vm_properties(session, ["name", "config.extraConfig", "runtime.powerState"]):
        extra = {o.key: o.value for o in props.get("config.extraConfig") or []}
        mark = parse_mark(extra.get(MARK_KEY))
        if mark is None:
            continue
        name = str(props.get("name", ""))
        if mark.in_use(active_runs, cutoff):
            report.kept.append(name)
            continue
        try:
            if props.get("runtime.powerState") == "poweredOn":
                with contextlib.suppress(VSphereError):
                    wait_for_task(session, session.call(vm.PowerOffVM_Task), what="power off")
            wait_for_task(session, session.call(vm.Destroy_Task), what=f"destroy {name}")
            report.removed.append(name)
        except VSphereError as exc:
            report.failed.append(f"{name}: {exc.get_message()}")
    return report
