"""``vmkeep rpo``: does every backup name have a restore point younger than the objective?"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    above_zero,
    console_err,
    console_out,
    require_repo,
    run_summarized,
    setup_logging,
)
from vmkeep.cli.main import app
from vmkeep.cli.spec_options import spec_from_options
from vmkeep.jobs.limits import MAX_RPO_HOURS


@app.command("rpo")
def rpo_cmd(
    repo: RepoOpt = "",
    max_age: Annotated[
        float, typer.Option("--max-age", callback=above_zero(MAX_RPO_HOURS),
                            help="Hours the newest point of a name may be old.")
    ] = 26.0,
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Backup names to watch (glob; default all).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Backup names not to watch (glob).")
    ] = None,
    other_repo: Annotated[
        list[str] | None, typer.Option("--also", help="Another repository to look at.")
    ] = None,
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Check the recovery point objective: exit code 1 when a backup name's newest restore point
    is older than --max-age hours (26: a daily backup with slack).  Read-only."""
    setup_logging(verbose)
    repos = [require_repo(repo), *(require_repo(r) for r in other_repo or ())]
    from vmkeep.orchestration import choose

    orchestrate = choose(orchestrate)
    from vmkeep.jobs.maintenance_specs import RpoCheckSpec
    from vmkeep.jobs.rpo_check import RpoMissed, rpo_check

    spec = spec_from_options(RpoCheckSpec, dict(repos=repos, max_age_hours=max_age,
                                          names=name or [], exclude=exclude or []))
    run_summarized(rpo_check, spec, orchestrate, json_out, _show, RpoMissed)


def _show(summary: dict[str, Any]) -> None:
    missed, met = summary["missed"], summary["met"]
    for row, verdict in [*((r, "MISSED") for r in missed), *((r, "ok") for r in met)]:
        newest = ("no restore point" if row["point"] is None
                  else f"newest {row['point']} {row['age_hours']:.1f} h ago")
        console_out.print(f"{verdict:6}  {row['name']}  {newest}",
                          markup=False, highlight=False, soft_wrap=True)
    console_err.print(f"{len(met)} of {len(missed) + len(met)} backup names within "
                      f"{summary['max_age_hours']:g} h")
