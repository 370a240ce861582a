"""Run a job from the CLI (or a script): in-process, or as its Prefect flow.

:func:`run` calls ``job(spec, LocalRuntime())`` when no Prefect API is configured (Prefect is
then never imported), otherwise the job's flow (``vmkeep.flows.<module>.<name>``, the module
named like the job's), which runs it with a ``PrefectRuntime``.  :func:`run_flow` is the keyword
form scripts and tests use: ``run_flow(backup_vm, False, repo=…, vm=…, vcenter=…)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from vmkeep.jobs import maintenance_specs as maint
from vmkeep.jobs import restore_specs, specs
from vmkeep.jobs.instant_restore import InstantRestoreSpec
from vmkeep.runtime.local import LocalRuntime
from vmkeep.runtime.settings import api_configured, prepare_prefect_env

T = TypeVar("T")

#: flow name -> (job "module:function", spec type) of the flows that wrap a job
JOBS: dict[str, tuple[str, type[specs.Spec]]] = {
    "backup-vm": ("vmkeep.jobs.backup_vm:backup_vm", specs.BackupVmSpec),
    **restore_specs.JOBS,
    "backup-vms": ("vmkeep.jobs.backup_vms:backup_vms", specs.BackupVmsSpec),
    "backup-image": ("vmkeep.jobs.backup_image:backup_image", specs.BackupImageSpec),
    "backup-files": ("vmkeep.jobs.backup_files:backup_files", specs.BackupFilesSpec),
    "sweep-snapshots": ("vmkeep.jobs.sweep_snapshots:sweep_snapshots", specs.SweepSpec),
}
# the maintenance jobs (vmkeep.jobs.maintenance_specs)
JOBS.update({
    "verify": ("vmkeep.jobs.verify:verify", maint.VerifySpec),
    "verify-point": ("vmkeep.jobs.verify:verify_point", maint.VerifyPointSpec),
    "retention": ("vmkeep.jobs.retention:retention", maint.RetentionSpec),
    "prune": ("vmkeep.jobs.retention:prune", maint.PruneSpec),
    "licence-report": ("vmkeep.jobs.licence_report:licence_report", maint.LicenceReportSpec),
    "tape-copy": ("vmkeep.jobs.tape_copy:tape_copy", maint.TapeCopySpec),
    "tape-restore": ("vmkeep.jobs.tape_restore:tape_restore", maint.TapeRestoreSpec),
})
JOBS["instant-restore"] = ("vmkeep.jobs.instant_restore:instant_restore", InstantRestoreSpec)


#: set once this process ran a job through Prefect (the CLI then leaves without tearing
#: Prefect's modules down: :mod:`vmkeep.cli.fast_exit`)
ORCHESTRATED = False


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def flow_of(job: Callable[..., Any]) -> Any:
    """The Prefect flow wrapping ``job`` (imports Prefect)."""
    module = importlib.import_module("vmkeep.flows." + job.__module__.rsplit(".", 1)[1])
    return getattr(module, job.__name__)


def run(
    job: Callable[[Any, Any], T],
    spec: Any,
    orchestrate: bool | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> T:
    """Run ``job`` on ``spec``: through Prefect when ``orchestrate`` (None: when Prefect's
    settings name an API), else in-process with a :class:`LocalRuntime`."""
    if orchestrate is None:
        orchestrate = api_configured()
    if not orchestrate:
        return job(spec, LocalRuntime(on_progress=on_progress))
    prepare_prefect_env()
    global ORCHESTRATED
    ORCHESTRATED = True
    flow_obj = flow_of(job)
    from vmkeep.runtime.prefect_runtime import fast_parameters, own_heartbeat

    fast_parameters(flow_obj)

    with own_heartbeat():  # the same heartbeat events, without a 0.5–1 s wait at the run's end
        result: T = flow_obj(spec)
    return result


def run_flow(
    flow_obj: Any,
    orchestrate: bool | None = None,
    progress: Callable[[int], None] | None = None,
    **params: Any,
) -> Any:
    """Run a flow by keywords; flows that wrap a job build their spec from ``params``."""
    entry = JOBS.get(getattr(flow_obj, "name", ""))
    if entry is not None:
        ref, spec_type = entry
        return run(_load(ref), specs.build(spec_type, params), orchestrate, progress)
    raise TypeError(f"{getattr(flow_obj, 'name', flow_obj)!r} is not a vmkeep job flow")
