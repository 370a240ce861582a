"""``vmkeep restore image POINT --to PATH``: export a backed-up disk as a raw image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    byte_progress,
    console_err,
    emit_json,
    human_bytes,
    require_repo,
    setup_logging,
)
from vmkeep.cli.main import restore_app


@restore_app.command("image")
def restore_image_cmd(
    point: Annotated[str, typer.Argument(help="Restore point id, prefix, NAME@latest or latest.")],
    to: Annotated[Path, typer.Option("--to", help="Target file (raw image).")],
    disk: Annotated[int, typer.Option("--disk", help="Disk number.")] = 0,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Restore one disk of a restore point, bit-identical, to a raw image file."""
    setup_logging(verbose)
    repo_url = require_repo(repo)
    from vmkeep.orchestration import choose

    orchestrate = choose(orchestrate)
    from vmkeep.flows.restore_image import restore_image
    from vmkeep.tasks.runtime import run_flow

    with byte_progress(f"restoring to {to.name}", None, not json_out and not orchestrate) as adv:
        summary = run_flow(
            restore_image,
            orchestrate,
            repo=repo_url,
            point=point,
            target=str(to),
            disk=disk,
            progress=None if orchestrate else adv,
        )
    if json_out:
        emit_json(summary)
    else:
        console_err.print(
            f"restored {human_bytes(summary['bytes'])} to {to} in {summary['duration_s']:.1f} s"
        )
