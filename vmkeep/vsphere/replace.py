"""Replacing an existing VM by a restore without losing it if the restore fails.

``restore vm --overwrite`` over a VM that exists never destroys it first.  :func:`set_aside`
marks it (``extraConfig`` key :data:`ASIDE_KEY`, value
``"<run id>;<ISO time>;<host name>;<pid>;<1 if it was powered on, else 0>;<its name>"``), powers
it off if it runs (never a suspended VM: that would discard its memory state) and renames it to
:func:`aside_name` — the name is free for the new VM and the old one is whole, on its own files.
Only once the new VM is complete does :func:`remove_replaced` destroy the old one; if the restore
fails, :func:`put_back` gives it its name back, clears the mark and powers it on again if it
was on.  Both VMs exist while the restore runs, so the datastore needs room for both; if it has
none, the restore fails and the old VM is put back (remove it yourself first, or restore to
another datastore).

The mark is written before the power-off and the rename, so a restore killed at any point
(kill -9, a crashed data mover) leaves a VM :func:`sweep_set_aside` can recognise: once its run
is not active, its mark is older than the sweep's age and — when the mark names this machine —
its process is gone, it is put back if no VM of its folder holds its name (the half-restored new
VM is swept first; VM names are unique per folder only, so another folder's VM of the name does
not count); if one does (the restore completed but was killed before removing it), it is kept and
reported, never destroyed by the sweep.  VMs without the mark are never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from vmkeep import clock
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import CannotReplace, VSphereError
from vmkeep.vsphere.inventory import VM_PARENT_PATHS, parent_from, vm_properties
from vmkeep.vsphere.restore_marker import (
    RestoreMark,
    new_mark,
    parse_mark,
    set_extra_config,
)
from vmkeep.vsphere.waiter import wait_for_task

ASIDE_KEY = "vmkeep.restore.replacing"
MAX_VM_NAME = 80  # vSphere's limit on an entity name
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetAside:
    """An existing VM a restore is replacing: ``vm`` is now called ``aside``, was ``name``."""

    vm: Any
    name: str
    aside: str
    was_on: bool
    mark: RestoreMark


def aside_name(name: str, run_id: str) -> str:
    """The name a replaced VM carries while its replacement is restored: ≤ 80 characters also
    as vSphere stores it, where ``/``, ``\\`` and ``%`` take three each
    (:mod:`vmkeep.vsphere.names`)."""
    suffix = f" (vmkeep: being replaced, run {run_id[:8]})"
    room, kept = MAX_VM_NAME - len(suffix), []
    for ch in name:
        room -= 3 if ch in "/\\%" else 1
        if room < 0:
            break
        kept.append(ch)
    return "".join(kept) + suffix


def mark_value(mark: RestoreMark, was_on: bool, name: str) -> str:
    return f"{mark.value()};{int(was_on)};{name}"


def parse_aside(value: str | None) -> tuple[RestoreMark, bool, str] | None:
    """(mark, was powered on, original name) of an :data:`ASIDE_KEY` value, or None."""
    parts = (value or "").split(";", 5)
    if len(parts) != 6 or parts[4] not in ("0", "1") or not parts[5]:
        return None
    mark = parse_mark(";".join(parts[:4]))
    return None if mark is None else (mark, parts[4] == "1", parts[5])


def set_aside(session: Session, vm: Any, name: str, run_id: str) -> SetAside:
    """Mark ``vm`` (called ``name``), power it off if it runs, rename it aside.

    A VM vSphere cannot reach — its host disconnected, or the VM orphaned, inaccessible or
    invalid — cannot be marked, stopped or renamed: :class:`CannotReplace` before anything
    changes, saying what to do instead."""
    reach = session.get(vm, "runtime.connectionState")
    if reach and reach != "connected":
        raise CannotReplace(name, reach)
    state = session.get(vm, "runtime.powerState")
    was_on = state == "poweredOn"
    mark = new_mark(run_id)
    set_extra_config(session, vm, ASIDE_KEY, mark_value(mark, was_on, name), "mark replaced VM")
    if was_on:
        wait_for_task(session, session.call(vm.PowerOffVM_Task), what=f"power off {name}")
    aside = aside_name(name, run_id)
    wait_for_task(session, session.call(vm.Rename_Task, aside), what=f"rename {name} aside")
    log.info("set %s aside as %r while its replacement is restored", name, aside)
    return SetAside(vm, name, aside, was_on, mark)


def put_back(session: Session, vm: Any, name: str, was_on: bool) -> None:
    """Give ``vm`` its ``name`` back, clear the mark, power it on again if ``was_on``."""
    if session.get(vm, "name") != name:
        wait_for_task(session, session.call(vm.Rename_Task, name), what=f"rename back {name}")
    set_extra_config(session, vm, ASIDE_KEY, "", "unmark replaced VM")
    if was_on and session.get(vm, "runtime.powerState") != "poweredOn":
        wait_for_task(session, session.call(vm.PowerOnVM_Task), what=f"power on {name}")


def remove_replaced(session: Session, aside: SetAside) -> None:
    """Destroy the replaced VM (its replacement is complete)."""
    wait_for_task(session, session.call(aside.vm.Destroy_Task), what=f"destroy {aside.aside}")


@dataclass
class SetAsideReport:
    put_back: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def sweep_set_aside(
    session: Session, older_than: timedelta, active_runs: set[str] | frozenset[str] = frozenset()
) -> SetAsideReport:
    """Put back VMs a killed restore left set aside (rules in the module docstring)."""
    cutoff = clock.now() - older_than
    report = SetAsideReport()
    props = ["name", *VM_PARENT_PATHS, "config.extraConfig"]
    vms = list(vm_properties(session, props))

    def in_folder(vm: Any, p: dict[str, Any], name: str) -> tuple[str, str]:
        """A name in its folder (or vApp): vSphere keeps VM names unique per folder only."""
        return (getattr(parent_from(p, vm), "_moId", ""), name)

    names = {in_folder(vm, p, str(p.get("name", ""))) for vm, p in vms}
    for vm, p in vms:
        extra = {o.key: o.value for o in p.get("config.extraConfig") or []}
        parsed = parse_aside(extra.get(ASIDE_KEY))
        if parsed is None:
            continue
        mark, was_on, name = parsed
        current = str(p.get("name", ""))
        if mark.in_use(active_runs, cutoff):
            report.kept.append(f"{current}: VM set aside by a running restore")
            continue
        if current != name and in_folder(vm, p, name) in names:
            report.kept.append(
                f"{current}: replaced VM left aside ({name!r} exists again); remove it when no "
                "longer needed"
            )
            continue
        try:
            put_back(session, vm, name, was_on)
        except VSphereError as exc:
            report.failed.append(f"{current}: put back as {name!r}: {exc.get_message()}")
            continue
        names.discard(in_folder(vm, p, current))
        names.add(in_folder(vm, p, name))
        report.put_back.append(f"{name}: VM set aside by a restore that did not finish")
    return report
