"""``vmkeep copy``: restore points from another repository into this one (off-site copies)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    byte_progress,
    console_err,
    console_out,
    human_bytes,
    require_repo,
    run_summarized,
    setup_logging,
)
from vmkeep.cli.main import app
from vmkeep.cli.spec_options import spec_from_options


@app.command("copy")
def copy_cmd(
    points: Annotated[
        list[str] | None,
        typer.Argument(help="Source points (id, prefix, NAME@latest); default: all.",
                       show_default=False),
    ] = None,
    repo: RepoOpt = "",
    from_repo: Annotated[
        str,
        typer.Option("--from-repo", envvar="VMKEEP_FROM_REPO",
                     help="Repository to copy from (its password: VMKEEP_FROM_PASSWORD*)."),
    ] = "",
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="Only points of these backup names (glob)."),
    ] = None,
    latest: Annotated[
        bool, typer.Option("--latest", help="Only the newest point of each backup name.")
    ] = False,
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Copy restore points from --from-repo into --repo, each once: image, VM and file points,
    stored in the destination's own format and keys.  Incremental: only chunks changed since
    the previous copy of a name are read."""
    setup_logging(verbose)
    dest = require_repo(repo)
    if not from_repo:
        from vmkeep.errors import UsageError

        raise UsageError("no source repository given: use --from-repo or set VMKEEP_FROM_REPO")
    source = require_repo(from_repo)
    from vmkeep.orchestration import choose

    orchestrate = choose(orchestrate)
    from vmkeep.jobs.copy_points import CopyIncomplete, copy_points
    from vmkeep.jobs.maintenance_specs import CopySpec

    spec = spec_from_options(CopySpec, dict(repo=dest, from_repo=source, points=points or [],
                                      names=name or [], latest=latest))
    with byte_progress("copy", None, not json_out) as advance:
        run_summarized(copy_points, spec, orchestrate, json_out, _show, CopyIncomplete,
                       advance)


def _show(summary: dict[str, Any]) -> None:
    for row in summary["copied"]:
        console_out.print(
            f"copied  {row['name']}  {row['source'][:8]} -> {row['short_id']}  "
            f"{human_bytes(row['bytes_read'])} read, {human_bytes(row['bytes_new'])} new",
            markup=False, highlight=False, soft_wrap=True)
    for row in summary["failed"]:
        console_out.print(f"FAILED  {row['name']}  {row['source'][:8]}  {row['error']}",
                          markup=False, highlight=False, soft_wrap=True)
    console_err.print(f"{len(summary['copied'])} restore point(s) copied, "
                      f"{summary['skipped']} already there, "
                      f"{human_bytes(summary['bytes_stored'])} stored")
