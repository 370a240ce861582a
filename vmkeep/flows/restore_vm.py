"""Flow ``restore-vm``: the Prefect face of :func:`vmkeep.jobs.restore_vm.restore_vm`.

The run is named ``restore-vm <new name> <point> <YYYY-MM-DD HH:MM>``; its parameter is one
:class:`~vmkeep.jobs.restore_specs.RestoreVmSpec` (an empty point is refused before the run
starts).  No flow retries: a restore is asked for by a person, and a failed one leaves nothing
behind (the job aborts the import lease and destroys the half-restored VM; after a kill -9 the
sweep does, by the VM's half-restored mark).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from vmkeep.jobs.restore_specs import RestoreVmSpec
from vmkeep.jobs.restore_vm import restore_vm as job
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow, run_name


@flow(
    name="restore-vm",
    flow_run_name=run_name(
        "restore-vm", RestoreVmSpec, lambda s: " ".join(filter(None, [s.name, s.point]))
    ),
    persist_result=False,
    log_prints=False,
)
def restore_vm(spec: RestoreVmSpec) -> dict[str, Any]:
    """Recreate a whole VM from a VM restore point (see :mod:`vmkeep.jobs.restore_vm`)."""
    result: dict[str, Any] = run_job_in_flow(job, spec)
    return result


register_flow(job, restore_vm)
