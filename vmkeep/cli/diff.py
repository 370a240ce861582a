"""``vmkeep diff A B``: what changed between two restore points (:mod:`vmkeep.browse.diff`).
Library calls only: no flow, no Prefect import."""

from __future__ import annotations

from typing import Annotated

import typer

from vmkeep.cli.common import (
    JsonOpt,
    RepoOpt,
    VerboseOpt,
    console_out,
    emit_json,
    human_bytes,
    open_repository,
    setup_logging,
    visible,
)
from vmkeep.cli.main import app


@app.command("diff")
def diff_cmd(
    before: Annotated[str, typer.Argument(help="The earlier point (id, prefix, NAME@latest).")],
    after: Annotated[str, typer.Argument(help="The later point.")],
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Show what changed between two restore points: files added (+), removed (-), modified
    (M), with new metadata only (U, file points), of another type (T); each disk's changed
    bytes."""
    from vmkeep.browse.diff import diff_points

    setup_logging(verbose)
    result = diff_points(open_repository(repo), before, after)
    if json_out:
        emit_json(result.to_json())
        return
    a, b = result.before, result.after
    console_out.print(
        f"comparing {a.kind} points {a.id[:8]} ({a.time:%Y-%m-%d %H:%M}) and {b.id[:8]} "
        f"({b.time:%Y-%m-%d %H:%M})", soft_wrap=True)
    for disk in result.disks:
        console_out.print(
            f"disk {disk.index} {visible(disk.name)}: {human_bytes(disk.changed_bytes)} of "
            f"{human_bytes(disk.size)} changed", soft_wrap=True)
    for entry in result.entries:
        shown = visible(entry.where) + ("/" if entry.type == "dir" else "")
        console_out.print(f"{entry.change:<5}{shown}", soft_wrap=True)
    counts = result.counts()
    console_out.print(
        f"Entries: {counts['added']} new, {counts['removed']} removed, {counts['modified']} "
        f"changed, {counts['metadata_changed']} with new metadata only, "
        f"{counts['type_changed']} of another type; "
        f"{human_bytes(counts['bytes_added'])} in new files, "
        f"{human_bytes(counts['bytes_removed'])} in removed ones", soft_wrap=True)
    for warning in result.warnings:
        console_out.print(f"warning: {visible(warning)}", style="yellow", soft_wrap=True)
