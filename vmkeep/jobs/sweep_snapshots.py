"""Job: the snapshot sweep — remove vmkeep snapshots that outlived their run (Snapshot Hunter).

A run killed with -9, a host that was down at release time, a failed removal: whatever the cause,
a snapshot named ``vmkeep-<run id>`` with vmkeep's marker whose run is no longer active and that
is older than ``older_than_minutes`` is removed, disks consolidated where vSphere asks for it.
Before that, disks the ``hotadd`` transport attached to a mover VM (marked in the mover's
``extraConfig``, see :mod:`vmkeep.vsphere.hotadd`) under the same rule are detached; disks
without vmkeep's mark are never touched.
Snapshots without both the name prefix and the marker are never touched.  The same sweep removes
VMs a restore left half-built (killed mid-upload): only VMs carrying vmkeep's half-restored mark
(:mod:`vmkeep.vsphere.restore_marker`), under the same run/age rules, and never while the
process that marked them is alive on this machine.  Then VMs a killed ``restore vm
--overwrite`` left set aside (:mod:`vmkeep.vsphere.replace`) are put back — renamed back, powered
on again if they ran — when no VM holds their name; never destroyed.  Run hourly from a
deployment; ``active_runs`` defaults to the runs the runtime reports as running (under Prefect:
its running, pending and cancelling flow runs; in-process: none).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from vmkeep.jobs.specs import SweepSpec
from vmkeep.runtime.base import Runtime, step_def
from vmkeep.tasks.vcenter import open_session
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.hotadd import sweep_hotadd
from vmkeep.vsphere.replace import sweep_set_aside
from vmkeep.vsphere.restore_marker import sweep_half_restored
from vmkeep.vsphere.snapshots import sweep_snapshots as sweep


@step_def("sweep-vcenter")
def sweep_step(session: Session, older_than: timedelta, active: set[str]) -> dict[str, Any]:
    # first the hot-added disks: vSphere cannot consolidate a snapshot a mover still holds
    hot = sweep_hotadd(session, older_than, active)
    report = sweep(session, older_than, active)
    return {
        "detached": hot.detached,
        "detach_failed": [f"{what}: {why}" for what, why in hot.failed],
        "removed": [f"{s.vm_name}: {s.name}" for s in report.removed],
        "failed": [f"{s.vm_name}: {s.name}: {why}" for s, why in report.failed],
        "kept": [f"{s.vm_name}: {s.name}" for s in report.kept],
    }


@step_def("sweep-half-restored")
def half_restored_step(
    session: Session, older_than: timedelta, active: set[str]
) -> dict[str, Any]:
    report = sweep_half_restored(session, older_than, active)
    return {
        "removed": [f"{n}: half-restored VM" for n in report.removed],
        "failed": [f"{line} (half-restored VM)" for line in report.failed],
        "kept": [f"{n}: half-restored VM" for n in report.kept],
    }


@step_def("sweep-set-aside")
def set_aside_step(session: Session, older_than: timedelta, active: set[str]) -> dict[str, Any]:
    report = sweep_set_aside(session, older_than, active)
    return {
        "put_back": report.put_back,
        "failed": [f"{line} (VM set aside)" for line in report.failed],
        "kept": report.kept,
    }


def sweep_snapshots(spec: SweepSpec, rt: Runtime) -> dict[str, Any]:
    """Remove leaked vmkeep snapshots; returns what was removed, kept and what failed."""
    active = set(spec.active_runs) if spec.active_runs is not None else rt.active_run_ids()
    session = open_session(spec.vcenter)
    try:
        age = timedelta(minutes=spec.older_than_minutes)
        result = rt.step(sweep_step, session, age, active)
        vms = rt.step(half_restored_step, session, age, active)
        for key in ("removed", "failed", "kept"):
            result[key] = result[key] + vms[key]
        aside = rt.step(set_aside_step, session, age, active)  # after: the name may be free now
        result["put_back"] = aside["put_back"]
        result["failed"] += aside["failed"]
        result["kept"] += aside["kept"]
    finally:
        session.close()
    for line in result["detached"]:
        rt.log.info("detached hot-added disk %s", line)
    for line in result["detach_failed"]:
        rt.log.warning("could not detach hot-added disk %s", line)
    for line in result["removed"]:
        rt.log.info("removed %s", line)
    for line in result["put_back"]:
        rt.log.warning("put back %s", line)
    for line in result["failed"]:
        rt.log.warning("could not clean up %s", line)
    rows = [{"snapshot": s, "action": "removed"} for s in result["removed"]] + [
        {"snapshot": s, "action": "FAILED"} for s in result["failed"]
    ] + [{"snapshot": s, "action": "put back"} for s in result["put_back"]] + [
        {"snapshot": f"hot-added {s}", "action": "detached"} for s in result["detached"]
    ] + [
        {"snapshot": f"hot-added {s}", "action": "FAILED"} for s in result["detach_failed"]
    ]
    if rows:
        rt.publish_table("snapshot-sweep", rows, "Leaked vmkeep snapshots")
    return result
