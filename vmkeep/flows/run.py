"""Run a job from the CLI (or a script): in-process, or as its Prefect flow.

:func:`run` calls ``job(spec, LocalRuntime())`` when no Prefect API is configured (Prefect is
then never imported), otherwise the job's flow (``vmkeep.flows.<module>.<name>``, the module
named like the job's), which runs it with a ``PrefectRuntime``.  Either way the run's report
goes out by :mod:`vmkeep.runtime.notify`'s rules (here, or in the flow).  :func:`run_flow` is
the keyword form scripts and tests use: ``run_flow(backup_vm, False, repo=…, vm=…, vcenter=…)``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from vmkeep.runtime.local import LocalRuntime
from vmkeep.runtime.settings import api_configured, prepare_prefect_env

if TYPE_CHECKING:
    from vmkeep.jobs.specs import Spec

T = TypeVar("T")

#: flow name -> (job "module:function", spec type "module:Class") of the flows that wrap a job
#: other than the restores (:data:`vmkeep.jobs.restore_specs.JOBS`); :data:`JOBS` resolves them.
#: Names, not objects: :func:`run` is how every CLI verb runs its job, and importing every job's
#: spec module (the maintenance and instant-restore specs pull in retention, vSphere and the
#: browse layer) cost each ``vmkeep backup image`` ~0.1 CPU-s of start-up it never used.
_JOB_REFS: dict[str, tuple[str, str]] = {
    "backup-vm": ("vmkeep.jobs.backup_vm:backup_vm", "vmkeep.jobs.specs:BackupVmSpec"),
    "backup-vms": ("vmkeep.jobs.backup_vms:backup_vms", "vmkeep.jobs.specs:BackupVmsSpec"),
    "backup-image": ("vmkeep.jobs.backup_image:backup_image", "vmkeep.jobs.specs:BackupImageSpec"),
    "backup-files": ("vmkeep.jobs.backup_files:backup_files", "vmkeep.jobs.specs:BackupFilesSpec"),
    "sweep-snapshots": (
        "vmkeep.jobs.sweep_snapshots:sweep_snapshots", "vmkeep.jobs.specs:SweepSpec"
    ),
    # the maintenance jobs (vmkeep.jobs.maintenance_specs)
    "verify": ("vmkeep.jobs.verify:verify", "vmkeep.jobs.maintenance_specs:VerifySpec"),
    "verify-point": (
        "vmkeep.jobs.verify:verify_point", "vmkeep.jobs.maintenance_specs:VerifyPointSpec"
    ),
    "retention": ("vmkeep.jobs.retention:retention", "vmkeep.jobs.maintenance_specs:RetentionSpec"),
    "prune": ("vmkeep.jobs.retention:prune", "vmkeep.jobs.maintenance_specs:PruneSpec"),
    "licence-report": (
        "vmkeep.jobs.licence_report:licence_report",
        "vmkeep.jobs.maintenance_specs:LicenceReportSpec",
    ),
    "rpo-check": ("vmkeep.jobs.rpo_check:rpo_check", "vmkeep.jobs.maintenance_specs:RpoCheckSpec"),
    "copy": ("vmkeep.jobs.copy_points:copy_points", "vmkeep.jobs.maintenance_specs:CopySpec"),
    "tape-copy": ("vmkeep.jobs.tape_copy:tape_copy", "vmkeep.jobs.maintenance_specs:TapeCopySpec"),
    "tape-restore": (
        "vmkeep.jobs.tape_restore:tape_restore", "vmkeep.jobs.maintenance_specs:TapeRestoreSpec"
    ),
    "instant-restore": (
        "vmkeep.jobs.instant_restore:instant_restore",
        "vmkeep.jobs.instant_restore:InstantRestoreSpec",
    ),
}


@functools.cache
def jobs() -> dict[str, tuple[str, type[Spec]]]:
    """flow name -> (job "module:function", spec type) of every flow that wraps a job, the
    restores included; imports every spec module on first use (:data:`JOBS` is this table)."""
    from vmkeep.jobs import restore_specs

    table = {name: (job, _load(spec)) for name, (job, spec) in _JOB_REFS.items()}
    return {**table, **restore_specs.JOBS}


def __getattr__(name: str) -> Any:
    if name == "JOBS":  # the table, resolved on first use (module attribute, PEP 562)
        return jobs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        from vmkeep.runtime import notify

        with notify.watch(job, spec, notify.configured) as run:
            run.result = job(spec, LocalRuntime(on_progress=on_progress))
        result: T = run.result
        return result
    from vmkeep.jobs.specs import require_utf8

    require_utf8(spec)  # a typed error, not httpx's UnicodeEncodeError after the run began
    prepare_prefect_env()
    flow_obj = flow_of(job)
    from vmkeep.runtime.prefect_runtime import fast_parameters, own_heartbeat

    fast_parameters(flow_obj)

    try:
        with own_heartbeat():  # the same heartbeat events, without a 0.5–1 s wait at the end
            flow_result: T = flow_obj(spec)
    except Exception as exc:
        from vmkeep.runtime.api_calls import raise_if_unreachable

        raise_if_unreachable(exc, "start its server, or run with --no-prefect")
        raise
    return flow_result


def run_flow(
    flow_obj: Any,
    orchestrate: bool | None = None,
    progress: Callable[[int], None] | None = None,
    **params: Any,
) -> Any:
    """Run a flow by keywords; flows that wrap a job build their spec from ``params``."""
    entry = jobs().get(getattr(flow_obj, "name", ""))
    if entry is not None:
        from vmkeep.jobs.specs import build

        ref, spec_type = entry
        return run(_load(ref), build(spec_type, params), orchestrate, progress)
    raise TypeError(f"{getattr(flow_obj, 'name', flow_obj)!r} is not a vmkeep job flow")
