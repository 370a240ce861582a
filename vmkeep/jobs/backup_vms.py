"""Job: back up many VMs — selected by names, patterns, folder, host, cluster or tag — each as a
``backup-vm`` child job (under Prefect a task run named ``backup-vm <VM> <time>`` whose steps are
named ``<VM>: <step>``), concurrently, while per-host and per-datastore snapshot limits hold.

The licence is checked once for every selected VM before any snapshot (one report per run).
``max_parallel`` bounds how many VM backups run at once; the snapshot slots of
``tasks/limits.py`` bound how many snapshots exist per host and per datastore (across flows and
workers under Prefect).  The run announces each VM's slots (``rt.expect_slots``), so under
Prefect it keeps a slot between its own VMs instead of returning it and asking the server again.
One VM failing does not stop the others; with ``retries``, the failed VMs of a pass wait
``retry_wait_s`` and run again (:mod:`vmkeep.jobs.vm_retries`; each summary says its
``attempts``); the job fails at the end (:class:`SomeBackupsFailed`, exit code 1) after reporting
every VM in a table.  A VM named
(by name or instanceUuid) that the selection does not find — gone, renamed, mistyped, or left
out by ``folder``/``host``/``cluster``/``tag`` — is such a failure, reported under the name
given; a glob pattern that matches no VM is a warning.  ``exclude`` (names, instanceUuids, glob
patterns) and ``exclude_tag`` (a vSphere tag) leave selected VMs out — a VM named and excluded
is excluded, not missing — and the run logs which.  ``stop_after`` is the run's backup window
(:mod:`vmkeep.jobs.backup_window`): after it, no VM backup or retry starts; those not started
are failures.
"""

from __future__ import annotations

import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vmkeep import clock
from vmkeep.errors import VmkeepError
from vmkeep.jobs import licence, vm_retries
from vmkeep.jobs.backup_vm import backup_vm
from vmkeep.jobs.backup_window import BackupWindow, BackupWindowEnded
from vmkeep.jobs.specs import BackupVmsSpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.repository import Repository
from vmkeep.tasks import limits
from vmkeep.tasks.catalog import catalog_items
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.tasks.vcenter import open_session
from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.inventory import VMInfo, excluded, list_vms, select_vms, unmatched
from vmkeep.vsphere.tagging import NoTaggingService, TagMatchesNoVM, tags_of_vms, vms_with_tag


class SomeBackupsFailed(VmkeepError):
    """{} of {} VM backup(s) failed: {}"""

    exit_code = 1

    def __init__(self, failed: int, total: int, names: str, summary: dict[str, Any]) -> None:
        super().__init__(failed, total, names)
        self.summary = summary


class NothingSelected(VmkeepError):
    """No VM matches the selection ({})."""

    exit_code = 14


def _select(spec: BackupVmsSpec) -> tuple[list[VMInfo], set[str], dict[str, list[str]] | None]:
    """The selected VMs, the morefs ``exclude_tag`` is attached to (left out later), and the
    selected VMs' vSphere tags by moref (:func:`_tags`); :class:`NothingSelected` when no VM
    is selected (naming the templates the selection would take in: only a name takes them)."""
    session = open_session(spec.vcenter)
    try:
        # vSphere tags come from the vAPI tagging service; a tag on no VM raises TagMatchesNoVM
        tagged = vms_with_tag(session, spec.tag) if spec.tag else None
        untagged: set[str] = set()
        if spec.exclude_tag:
            try:
                untagged = vms_with_tag(session, spec.exclude_tag)
            except TagMatchesNoVM:  # an exclusion tag on no VM leaves nothing out
                untagged = set()
        choose = functools.partial(
            select_vms, list_vms(session), names=spec.names, patterns=spec.patterns,
            folder=spec.folder, host=spec.host, cluster=spec.cluster, tagged=tagged,
        )
        chosen = choose()
        if not chosen:
            templates = [vm.name for vm in choose(include_templates=True)]
            hint = (f"; templates are backed up only when named exactly: {', '.join(templates)}"
                    if templates else "")
            raise NothingSelected(spec.selection() + hint)
        return chosen, untagged, _tags(session, chosen)
    finally:
        session.close()


def _tags(session: Any, vms: list[VMInfo]) -> dict[str, list[str]] | None:
    """Every VM's vSphere tags for its restore point, read once for the run (one vAPI session,
    batched: :func:`~vmkeep.vsphere.tagging.tags_of_vms`); no tagging service (a standalone
    ESXi host): none; any other failure: None, and each VM's backup reads its own (and warns)."""
    if not vms:
        return {}
    try:
        return tags_of_vms(session, [vm.moid for vm in vms])
    except NoTaggingService:
        return {vm.moid: [] for vm in vms}
    except VSphereError:
        return None


def _attempt_all(
    rt: Runtime, spec: BackupVmsSpec, vms: list[VMInfo], started: str, attempt: int,
    window: BackupWindow, tags: dict[str, list[str]] | None,
) -> list[tuple[VMInfo, dict[str, Any]]]:
    """One pass: back up ``vms`` concurrently; each VM with its summary, or ``{"vm", "error",
    "exception"}`` when it failed (or did not start: the backup window had ended)."""
    for vm in vms:  # the run may keep a slot between its VMs instead of asking again
        datastores = [d.datastore for d in vm.disks]
        rt.expect_slots(vm.instance_uuid, limits.slots_for(vm.host, datastores, spec.concurrency))
    again = f" (retry {attempt - 1})" if attempt > 1 else ""

    def one(vm: VMInfo) -> dict[str, Any]:
        window.ensure_open()  # checked as the VM's turn comes, not when it was queued
        return rt.subjob(
            backup_vm,
            spec.for_vm(vm.instance_uuid, vm.name, None if tags is None else tags.get(vm.moid)),
            f"backup-vm {vm.name} {started}{again}",
            label=vm.name,
            key=vm.instance_uuid,
        )

    results: list[tuple[VMInfo, dict[str, Any]]] = []
    with ThreadPoolExecutor(spec.max_parallel, thread_name_prefix="vmkeep-vm") as pool:
        futures = [(vm, pool.submit(contextvars.copy_context().run, one, vm)) for vm in vms]
        for vm, future in futures:
            try:
                results.append((vm, future.result()))
            except Exception as exc:
                message = vm_retries.message_of(exc)
                rt.log.error("%s: %s", vm.name, message)
                results.append((vm, {"vm": vm.name, "instance_uuid": vm.instance_uuid,
                                     "error": message, "exception": exc}))
    return results


def _passes(
    rt: Runtime, spec: BackupVmsSpec, chosen: list[VMInfo], started: str, window: BackupWindow,
    tags: dict[str, list[str]] | None,
) -> dict[str, dict[str, Any]]:
    """Every VM's last summary or error by instanceUuid: a first pass over ``chosen``, then a
    pass per retry over the VMs that failed and may be retried, while the window allows."""
    outcome: dict[str, dict[str, Any]] = {}  # instanceUuid -> the VM's last summary or error
    rules = vm_retries.policy(spec.retries, spec.retry_wait_s)
    pending = chosen
    for attempt in range(1, rules.attempts + 1):
        if attempt > 1:
            if not window.is_open(rules.delay(attempt - 1)):
                rt.log.warning("no retry of %s: the backup window (%s) ends before it",
                               ", ".join(vm.name for vm in pending), window.length)
                break
            vm_retries.pause_before_retry(
                rt, rules, attempt - 1, [(vm.name, outcome[vm.instance_uuid]["error"])
                                         for vm in pending])
        tries = _attempt_all(rt, spec, pending, started, attempt, window, tags)
        for vm, result in tries:
            earlier = outcome.get(vm.instance_uuid)
            if isinstance(result.get("exception"), BackupWindowEnded):
                if earlier is not None:  # keep what failed; say why it was not tried again
                    result = {**earlier, "error": f"{earlier['error']}; not retried: "
                              f"the backup window ended", "exception": result["exception"]}
                outcome[vm.instance_uuid] = {**result, "attempts": attempt - 1}
            else:
                outcome[vm.instance_uuid] = {**result, "attempts": attempt}
        pending = [vm for vm, result in tries
                   if "error" in result and rules.should_retry(
                       result["exception"], attempt, vm_retries.worth_retrying)]
        if not pending:
            break
    for result in outcome.values():
        result.pop("exception", None)
    return outcome


def backup_vms(spec: BackupVmsSpec, rt: Runtime) -> dict[str, Any]:
    """Back up every selected VM but the excluded ones; returns ``{"vms": [summary | error],
    "failed": n, "excluded": [VM names]}``."""
    refuse_secret_parameters(repo=spec.repo)
    chosen, untagged, tags = _select(spec)  # NothingSelected when none
    missing, empty = unmatched(chosen, spec.names, spec.patterns)
    for pattern in empty:
        rt.log.warning("pattern %r matches no VM", pattern)
    within = spec.filters()
    why = "no VM has this name or instanceUuid" + (f" within {within}" if within else "")
    not_found = [{"vm": name, "error": why} for name in missing]
    for entry in not_found:
        rt.log.error("%s: %s", entry["vm"], entry["error"])
    def out(vm: VMInfo) -> bool:
        return excluded(vm, spec.exclude) or vm.moid in untagged

    left_out = [vm.name for vm in chosen if out(vm)]
    if left_out:
        rt.log.info("excluded: %s", ", ".join(left_out))
        chosen = [vm for vm in chosen if not out(vm)]
        if not chosen:
            raise NothingSelected(spec.selection())
    licence.check(
        rt,
        image_vms=[{"host": v.host or "", "name": v.name, "uuid": v.instance_uuid} for v in chosen],
        remote_device=spec.remote_device if spec.transport == "direct" else None,
        catalog=catalog_items(Repository.open(spec.repo)),
    )
    started = clock.now().strftime("%Y-%m-%d %H:%M")
    window = BackupWindow.starting_now(spec.stop_after)

    outcome = _passes(rt, spec, chosen, started, window, tags)
    results = [outcome[vm.instance_uuid] for vm in chosen]
    results += not_found
    failed = [r for r in results if "error" in r]
    rt.publish_table(
        "backup-vms",
        [
            {
                "VM": r["vm"],
                "result": r.get("error") or "ok",
                "attempts": r.get("attempts"),
                "restore point": r.get("id"),
                "disks": ", ".join(f"{d['mode']}" for d in r.get("disks", [])),
                "consistency": r.get("consistency"),
                "CBT audit": (r.get("cbt_audit") or {}).get("status"),
                "snapshot held s": r.get("snapshot_held_s"),
                "snapshot released": r.get("snapshot_removed"),
            }
            for r in results
        ],
        f"{len(results) - len(failed)} of {len(results)} VMs backed up",
    )
    summary = {"vms": results, "failed": len(failed), "excluded": left_out}
    if failed:
        raise SomeBackupsFailed(
            len(failed), len(results), ", ".join(r["vm"] for r in failed), summary
        )
    return summary
