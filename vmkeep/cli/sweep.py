"""``vmkeep sweep``: remove vmkeep snapshots that outlived their run (never anyone else's)."""

from __future__ import annotations

from typing import Annotated

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    VerboseOpt,
    console_err,
    emit_json,
    setup_logging,
)
from vmkeep.cli.main import app
from vmkeep.cli.spec_options import spec_from_options
from vmkeep.cli.vcenter_opts import need_vcenter, vcenter_options
from vmkeep.jobs.limits import MAX_LEFTOVER_AGE_MIN
from vmkeep.vsphere.target import VCenterTarget


@app.command("sweep")
@vcenter_options
def sweep_cmd(
    vc: VCenterTarget,
    older_than: Annotated[
        float, typer.Option("--older-than", min=0, max=MAX_LEFTOVER_AGE_MIN,
                            help="Minutes a leftover must be old.")
    ] = 60.0,
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Find vmkeep snapshots left by dead runs and remove them, consolidating disks (disks
    vmkeep hot-added to a mover VM for those runs are detached first); remove half-restored VMs
    and put back VMs a killed restore --overwrite left aside."""
    setup_logging(verbose)
    target = need_vcenter(vc, "sweep")
    from vmkeep.orchestration import choose

    orchestrate = choose(orchestrate)
    from vmkeep.flows.run import run
    from vmkeep.jobs import specs
    from vmkeep.jobs.sweep_snapshots import sweep_snapshots

    spec = spec_from_options(specs.SweepSpec, dict(vcenter=target, older_than_minutes=older_than))
    result = run(sweep_snapshots, spec, orchestrate)
    if json_out:
        emit_json(result)
        return
    for line in result.get("detached", []):
        console_err.print(f"detached hot-added disk {line}")
    for line in result.get("detach_failed", []):
        console_err.print(f"failed to detach hot-added disk {line}", style="red")
    for line in result["removed"]:
        console_err.print(f"removed {line}")
    for line in result.get("put_back", []):
        console_err.print(f"put back {line}")
    for line in result["failed"]:
        console_err.print(f"failed {line}", style="red")
    put_back = f"{len(result['put_back'])} put back, " if result.get("put_back") else ""
    console_err.print(
        f"{len(result['removed'])} removed, {put_back}{len(result['failed'])} failed, "
        f"{len(result['kept'])} kept (young or still running)"
    )
    if result["failed"] or result.get("detach_failed"):
        raise typer.Exit(16)
