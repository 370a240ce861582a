"""``vmkeep restore image POINT --to PATH [--format raw|vmdk] [--device]``: export a backed-up
disk.

``raw`` (default): a bit-identical raw image.  ``vmdk``: a monolithicFlat VMDK, i.e. ``PATH``
(descriptor) plus ``PATH-flat.vmdk`` beside it (see :mod:`vmkeep.jobs.restore_image`).
``--device``: ``PATH`` is a block device (a disk, an LV, a loop device) the disk is written into.
``--to -``: the raw disk on standard output, every byte in order (pipe it into ``ssh``, ``dd``,
``zstd``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    emit_json,
    given_path,
    human_bytes,
    require_repo,
    setup_logging,
)
from vmkeep.cli.main import restore_app
from vmkeep.cli.restore_opts import check_stdout_options, run_restore
from vmkeep.storage.stream_out import STDOUT, STDOUT_NAME


@restore_app.command("image")
def restore_image_cmd(
    point: Annotated[str, typer.Argument(help="Restore point id, prefix, NAME@latest or latest.")],
    to: Annotated[
        Path, typer.Option("--to", parser=given_path,
                           help="Target file (raw image); - for standard output.")
    ],
    disk: Annotated[int, typer.Option("--disk", min=0, help="Disk number.")] = 0,
    image_format: Annotated[
        str, typer.Option("--format", help="raw, or vmdk (monolithicFlat: descriptor + flat).")
    ] = "raw",
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing file (never a device or FIFO)."),
    ] = False,
    device: Annotated[
        bool,
        typer.Option("--device", help="--to is a block device: write the disk into it, in "
                     "place (what it holds is lost; it must not be mounted or in use)."),
    ] = False,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
    from_tape: Annotated[
        str | None,
        typer.Option("--from-tape", metavar="LIBRARY",
                     help="Stream the point from this tape library (catalog from --repo)."),
    ] = None,
) -> None:
    """Restore one disk of a point, bit-identical, to a raw image, a VMDK, a block device or
    standard output (--to -)."""
    setup_logging(verbose)
    if from_tape and device:
        from vmkeep.errors import UsageError

        raise UsageError("--device restores from the repository only, not with --from-tape")
    if str(to) == STDOUT:
        check_stdout_options(
            "the disk", json_out, orchestrate,
            refused="--device, --format vmdk or --from-tape",
            given=device or image_format != "raw" or bool(from_tape),
            because="it streams a raw disk from the repository",
        )
        orchestrate = False  # in this process, whatever the profile says
    if from_tape:
        from vmkeep.cli.tape import restore_image_from_library

        restore_image_from_library(from_tape, point, str(to), repo or None, disk, image_format,
                                   json_out)
        return
    if image_format not in ("raw", "vmdk"):
        from vmkeep.errors import UsageError

        raise UsageError(f"--format must be raw or vmdk, not {image_format!r}")
    if device and image_format != "raw":
        from vmkeep.errors import UsageError

        raise UsageError("--device writes the disk's raw bytes: it takes no --format vmdk")
    params = {
        "repo": require_repo(repo),
        "point": point,
        "target": str(to),
        "disk": disk,
        "format": image_format,
        "overwrite": overwrite,
        "device": device,
    }
    summary = run_restore("restore_image", params, orchestrate, f"restoring to {to.name}", json_out)
    if json_out:
        emit_json(summary)
    else:
        where = STDOUT_NAME if str(to) == STDOUT else str(to)
        console_err.print(
            f"restored {human_bytes(summary['bytes'])} to {where} in {summary['duration_s']:.1f} s"
        )
