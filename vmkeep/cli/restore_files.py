"""``vmkeep restore files POINT:VOLUME/PATH… --to DIR | --to-guest VM:GUEST_DIR``.

Files and whole trees out of image or VM restore points (``POINT:p1/etc``; a bare
``POINT:VOLUME`` = the whole volume) or file restore points (``POINT:/PATH``), into a local
folder (created if missing), an existing remote folder (``sftp://``, ``smb://``) or into a
running guest over vSphere guest operations.  Guest data
is hostile: nothing is ever written outside the target; refused entries are listed.  Exit code 3
when some selected data could not be restored (the rest is).
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer

from vmkeep.cli.common import (
    JsonOpt,
    OrchestrateOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    emit_json,
    human_bytes,
    require_repo,
    setup_logging,
    visible,
)
from vmkeep.cli.main import restore_app
from vmkeep.cli.restore_opts import (
    GuestPasswordFileOpt,
    GuestUserOpt,
    check_stdout_options,
    run_restore,
)
from vmkeep.cli.vcenter_opts import NO_VCENTER, need_vcenter, vcenter_options
from vmkeep.errors import UsageError
from vmkeep.storage.stream_out import STDOUT, STDOUT_NAME
from vmkeep.vsphere.target import VCenterTarget

MAX_SHOWN = 20


def split_refs(refs: list[str]) -> tuple[str, list[str]]:
    """``POINT:REST`` arguments of one point -> (POINT, [REST…]) (``/`` when REST is absent)."""
    from vmkeep.browse.point import split_ref

    split = [split_ref(r) for r in refs]
    points = {point for point, _rest in split}
    if len(points) != 1:
        raise UsageError("restore files: all paths must come from one restore point")
    return points.pop(), [rest or "/" for _point, rest in split]


@restore_app.command("files")
@vcenter_options
def restore_files_cmd(
    refs: Annotated[list[str], typer.Argument(help="POINT:VOLUME/PATH (image) or POINT:/PATH.")],
    to: Annotated[str | None, typer.Option(
        "--to", help="Local target folder, or an existing remote one: sftp://[USER@]HOST/DIR "
        "or smb://HOST/SHARE/DIR (credentials as for a file backup's source); - : standard "
        "output — one file as its bytes, anything else as a tar archive."
    )] = None,
    to_guest: Annotated[
        str | None, typer.Option("--to-guest", help="VM:GUEST_DIR in a running guest.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing files (never follows links).")
    ] = False,
    preserve_owner: Annotated[bool, typer.Option(
        "--preserve-owner", help="Give files and folders the numeric owner and group they were "
        "backed up with (as root, into a local folder)."
    )] = False,
    keep_setid: Annotated[bool, typer.Option(
        "--keep-setid", help="Keep set-user-ID and set-group-ID bits (with --preserve-owner; "
        "only from sources you trust)."
    )] = False,
    vc: VCenterTarget = NO_VCENTER,
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
    if not (to if to is not None else to_guest or "").strip():
        raise UsageError("restore files: the target is empty (an unset variable?)")
    point, paths = split_refs(refs)
    if to == STDOUT:
        check_stdout_options(
            "the files", json_out, orchestrate,
            refused="--overwrite, --preserve-owner or --keep-setid",
            given=overwrite or preserve_owner or keep_setid,
            because="the tar archive holds owners and modes; tar -x --same-owner applies them",
        )
        orchestrate = False  # in this process, whatever the profile says
    from vmkeep.disks.restore_model import Ownership, refuse_ownership
    from vmkeep.guestfiles.backup import remote_protocol

    local = to not in (None, STDOUT) and remote_protocol(str(to), "target") is None
    refuse_ownership(Ownership(owner=preserve_owner, setid=keep_setid), to or to_guest or "",
                     local=local)
    params: dict[str, Any] = {
        "repo": repo_url,
        "point": point,
        "paths": paths,
        "overwrite": overwrite,
        "preserve_owner": preserve_owner,
        "keep_setid": keep_setid,
    }
    if to is not None:
        params["target"] = to
    else:
        params["guest"] = to_guest
        params["vcenter"] = need_vcenter(vc, "--to-guest")
        params["guest_user"] = guest_user
        params["guest_password_file"] = str(guest_password_file) if guest_password_file else None
    where = {None: str(to_guest), STDOUT: STDOUT_NAME}.get(to, str(to))
    from vmkeep.storage.disk_restore import target_folder

    # created before the run (a typed error, exit 15, when it cannot be); removed again if the
    # run fails while it is still empty
    folder = to.removeprefix("file://") if local and to is not None else None
    with target_folder(folder) if folder else contextlib.nullcontext():
        summary = run_restore("restore_files", params, orchestrate, f"restoring to {where}",
                              json_out)
    if json_out:
        emit_json(summary)
    else:
        _print_summary(summary, where)
    errors = int(summary.get("errors", 0))
    if errors:
        from vmkeep.browse.errors import RestoreIncomplete

        raise RestoreIncomplete(errors)


def _print_summary(summary: dict[str, Any], where: str) -> None:
    skipped = summary.get("skipped", [])
    links = "".join(
        f"{summary[key]} {label}(s), "
        for key, label in (("symlinks", "symlink"), ("hardlinks", "hard link"))
        if summary.get(key)
    )  # a restore of one symlink said "0 file(s), 0 folder(s)"
    console_err.print(
        f"restored {summary.get('files', 0)} file(s), {summary.get('dirs', 0)} folder(s), "
        f"{links}{human_bytes(summary.get('bytes', 0))} to {where} in "
        f"{summary.get('duration_s', 0):.1f} s; {len(skipped)} skipped",
        markup=False,
    )
    for w in skipped[:MAX_SHOWN]:
        console_err.print(
            f"  skipped {visible(w['path'])}: {w['reason']} {visible(w['detail'])}", markup=False
        )
    if len(skipped) > MAX_SHOWN:
        console_err.print(f"  … and {len(skipped) - MAX_SHOWN} more (see --json)", markup=False)
