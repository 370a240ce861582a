"""``vmkeep protect`` and ``vmkeep unprotect``: restore points that ``forget`` keeps
(:mod:`vmkeep.storage.protection`)."""

from __future__ import annotations

from typing import Annotated

import typer

from vmkeep.cli.common import (
    JsonOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    emit_json,
    open_repository,
    setup_logging,
)
from vmkeep.cli.main import app

PointsArg = Annotated[
    list[str], typer.Argument(help="Restore points (ids, prefixes or NAME@latest).")
]


@app.command("protect")
def protect_cmd(
    points: PointsArg,
    note: Annotated[
        str, typer.Option("--note", help="Why it is kept (shown by list and by a refused forget).")
    ] = "",
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Protect restore points: every forget keeps them until unprotected."""
    from vmkeep.storage.protection import protect

    setup_logging(verbose)
    repository = open_repository(repo)
    ids = [repository.resolve(p) for p in points]
    records = protect(repository, ids, note)
    if json_out:
        emit_json({"protected": [r.to_json() for r in records]})
        return
    for record in records:
        console_err.print(f"restore point {record.point[:8]} protected")


@app.command("unprotect")
def unprotect_cmd(
    points: PointsArg,
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Remove the protection of restore points (forget may then remove them)."""
    from vmkeep.storage.protection import unprotect

    setup_logging(verbose)
    repository = open_repository(repo)
    ids = [repository.resolve(p) for p in points]
    had = unprotect(repository, ids)
    if json_out:
        emit_json({"unprotected": had, "were_not_protected": [i for i in ids if i not in had]})
        return
    for point_id in ids:
        state = "unprotected" if point_id in had else "was not protected"
        console_err.print(f"restore point {point_id[:8]} {state}")
