"""``vmkeep backup image PATH --name NAME``: back up a raw disk image or a VMDK."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    byte_progress,
    console_err,
    emit_json,
    given_path,
    human_bytes,
    require_repo,
    setup_logging,
)
from vmkeep.cli.main import backup_app
from vmkeep.cli.spec_options import spec_from_options
from vmkeep.errors import InputError


def load_extents(path: Path) -> list[tuple[int, int]]:
    """Read a JSON list of ``[offset, length]`` pairs of whole numbers; typed error on anything
    else (``0.5``, ``true`` or ``1e400`` are not byte offsets: they were truncated, taken as 1
    or ended in an ``OverflowError``)."""
    try:
        raw: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a JSON list of [offset, length] pairs ({exc})") from None
    if not isinstance(raw, list) or not all(
        isinstance(pair, list) and len(pair) == 2
        and all(type(v) is int for v in pair) for pair in raw
    ):
        raise InputError(f"{path}: not a JSON list of [offset, length] pairs of whole numbers")
    extents = [(o, n) for o, n in raw]
    if any(o < 0 or n < 0 for o, n in extents):
        raise InputError(f"{path}: negative offset or length")
    return extents


@backup_app.command("image")
def backup_image_cmd(
    path: Annotated[Path, typer.Argument(help="Raw disk image or VMDK.", parser=given_path)],
    name: Annotated[str, typer.Option("--name", help="Name of the backup chain.")],
    changed_extents: Annotated[
        Path | None,
        typer.Option("--changed-extents", parser=given_path,
                     help="JSON list of [offset, length]: read only these."),
    ] = None,
    exclude_swap: Annotated[
        bool,
        typer.Option(
            "--exclude-swap",
            help="Record the guest's swap as zeros instead of reading it (as backup vm).",
        ),
    ] = False,
    exclude_deleted: Annotated[
        bool,
        typer.Option(
            "--exclude-deleted",
            help="Record the free blocks of NTFS, ext2/3/4, XFS and Btrfs volumes (deleted data) "
            "as zeros instead of reading them (as backup vm; the image must be at rest).",
        ),
    ] = False,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Back up a disk image; later backups of the same NAME are incremental."""
    setup_logging(verbose)
    repo_url = require_repo(repo)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    extents = load_extents(changed_extents) if changed_extents else None
    from vmkeep.orchestration import choose

    orchestrate = choose(orchestrate)
    from vmkeep.flows.run import run
    from vmkeep.jobs import specs
    from vmkeep.jobs.backup_image import backup_image

    spec = spec_from_options(
        specs.BackupImageSpec,
        {"repo": repo_url, "path": str(path), "name": name, "changed_extents": extents,
         "exclude_swap": exclude_swap, "exclude_deleted": exclude_deleted},
    )
    size = os.path.getsize(path)
    with byte_progress(f"backing up {path.name}", size, not json_out and not orchestrate) as adv:
        summary = run(backup_image, spec, orchestrate, None if orchestrate else adv)
    if json_out:
        emit_json(summary)
    else:
        console_err.print(
            f"restore point {summary['short_id']} ({summary['mode']}: {summary['reason']}): "
            f"read {human_bytes(summary['bytes_read'])}, new {human_bytes(summary['bytes_new'])}, "
            f"stored {human_bytes(summary['bytes_stored'])} in {summary['duration_s']:.1f} s"
        )
