"""``vmkeep restore files POINT:VOLUME/PATH… --to DIR | --to-guest VM:GUEST_DIR``.

Files and whole trees out of image or VM restore points (``POINT:p1/etc``; a bare
``POINT:VOLUME`` = the whole volume) or file restore points (``POINT:/PATH``), into a local
folder (created if missing) or into a running guest over vSphere guest operations.  Guest data
is hostile: nothing is ever written outside the target; refused entries are listed.  Exit code 3
when some selected data could not be restored (the rest is).
"""

from __future__ import annotations

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
    human_bytes,
    require_repo,
    setup_logging,
    visible,
)
from vmkeep.cli.main import restore_app
from vmkeep.cli.restore_opts import GuestPasswordFileOpt, GuestUserOpt, OptionalVCenterOpt
from vmkeep.cli.vcenter_opts import (
    CafileOpt,
    InsecureOpt,
    PasswordBlockOpt,
    PasswordFileOpt,
    ThumbprintOpt,
    UserOpt,
    vcenter_params,
)
from vmkeep.errors import UsageError

MAX_SHOWN = 20


def split_refs(refs: list[str]) -> tuple[str, list[str]]:
    """``POINT:REST`` arguments of one point -> (POINT, [REST…]) (``/`` when REST is absent)."""
    points = {r.partition(":")[0] for r in refs}
    if len(points) != 1:
        raise UsageError("restore files: all paths must come from one restore point")
    return points.pop(), [r.partition(":")[2] or "/" for r in refs]


@restore_app.command("files")
def restore_files_cmd(
    refs: Annotated[list[str], typer.Argument(help="POINT:VOLUME/PATH (image) or POINT:/PATH.")],
    to: Annotated[Path | None, typer.Option("--to", help="Local target folder.")] = None,
    to_guest: Annotated[
        str | None, typer.Option("--to-guest", help="VM:GUEST_DIR in a running guest.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing files (never follows links).")
    ] = False,
    vcenter: OptionalVCenterOpt = None,
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
    password_block: PasswordBlockOpt = None,
    cafile: CafileOpt = None,
    thumbprint: ThumbprintOpt = None,
    insecure: InsecureOpt = False,
    guest_user: GuestUserOpt = None,
    guest_password_file: GuestPasswordFileOpt = None,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Restore files and trees out of a restore point, locally or into a running guest."""
    setup_logging(verbose)
    repo_url = require_repo(repo)
    if (to is None) == (to_guest is None):
        raise UsageError("restore files: give exactly one of --to DIR or --to-guest VM:DIR")
    point, paths = split_refs(refs)
    params: dict[str, Any] = {
        "repo": repo_url,
        "point": point,
        "paths": paths,
        "overwrite": overwrite,
    }
    if to is not None:
        from vmkeep.storage.disk_restore import make_target_folder

        make_target_folder(str(to))  # typed error (exit 15) when it cannot be created
        params["target"] = str(to)
    else:
        params["guest"] = to_guest
        if not vcenter:
            raise UsageError("--to-guest needs --vcenter (or VMKEEP_VCENTER)")
        params.update(
            vcenter_params(
                vcenter, user, password_file, password_block, cafile, thumbprint, insecure
            )
        )
        params["guest_user"] = guest_user
        params["guest_password_file"] = str(guest_password_file) if guest_password_file else None
    from vmkeep.orchestration import choose

    orchestrate = choose(orchestrate)
    where = str(to) if to is not None else str(to_guest)
    with byte_progress(f"restoring to {where}", None, not json_out and not orchestrate) as adv:
        summary = None
        if to is not None and not orchestrate:  # no flow machinery for a local image restore
            summary = _local_image_restore(repo_url, point, paths, str(to), overwrite, adv)
        if summary is None:
            from vmkeep.flows.restore_files import restore_files
            from vmkeep.tasks.runtime import run_flow

            summary = run_flow(
                restore_files, orchestrate, progress=None if orchestrate else adv, **params
            )
    if json_out:
        emit_json(summary)
    else:
        _print_summary(summary, where)
    errors = int(summary.get("errors", 0))
    if errors:
        from vmkeep.browse.errors import RestoreIncomplete

        raise RestoreIncomplete(errors)


def _local_image_restore(
    repo_url: str, point: str, paths: list[str], target: str, overwrite: bool, progress: Any
) -> dict[str, Any] | None:
    """What the ``restore-files`` flow does for an image or VM point and a local folder, without
    importing the flow and task modules (start-up time of the quick verbs); ``None`` for a file
    point (the flow handles it)."""
    import time

    from vmkeep.browse.local import restore_image_paths
    from vmkeep.browse.point import PointImage, point_kind, split_volume_path
    from vmkeep.storage.repository import Repository

    started = time.monotonic()
    repository = Repository.open(repo_url)
    point_id, kind = point_kind(repository, point)
    if kind == "files":
        return None
    with PointImage(repository, repository.load_point(point_id)) as img:
        summary: dict[str, Any] = restore_image_paths(
            img,
            [split_volume_path(p) for p in paths],
            target,
            overwrite=overwrite,
            progress=progress,
        ).to_json()
    summary["kind"] = kind
    summary["duration_s"] = round(time.monotonic() - started, 3)
    return summary


def _print_summary(summary: dict[str, Any], where: str) -> None:
    skipped = summary.get("skipped", [])
    console_err.print(
        f"restored {summary.get('files', 0)} file(s), {summary.get('dirs', 0)} folder(s), "
        f"{human_bytes(summary.get('bytes', 0))} to {where} in "
        f"{summary.get('duration_s', 0):.1f} s; {len(skipped)} skipped",
        markup=False,
    )
    for w in skipped[:MAX_SHOWN]:
        console_err.print(
            f"  skipped {visible(w['path'])}: {w['reason']} {visible(w['detail'])}", markup=False
        )
    if len(skipped) > MAX_SHOWN:
        console_err.print(f"  … and {len(skipped) - MAX_SHOWN} more (see --json)", markup=False)
