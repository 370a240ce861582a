"""``vmkeep object-lock status|enable|policy|repair``: immutable repositories on S3 Object Lock.

See :mod:`vmkeep.storage.object_lock` for what the store enforces and why.  Every command works
on the bucket behind ``--repo`` with the credentials of the environment (``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID`` …): ``enable`` and ``repair`` need the bucket admin's, never the backup
host's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from vmkeep.cli.common import (
    JsonOpt,
    RepoOpt,
    VerboseOpt,
    console_err,
    console_out,
    emit_json,
    require_repo,
    setup_logging,
)
from vmkeep.cli.main import app
from vmkeep.errors import UsageError

if TYPE_CHECKING:
    from vmkeep.storage.backend import Backend

lock_app = typer.Typer(
    help="Immutable repositories on S3 Object Lock (backups can add, never destroy).",
    no_args_is_help=True,
)
app.add_typer(lock_app, name="object-lock")


def _backend(repo: str) -> Backend:
    from vmkeep.storage.backend import open_backend

    url = require_repo(repo)
    if not url.startswith(("s3://", "s3a://")):
        raise UsageError("object lock needs an S3 repository (s3://bucket/prefix)")
    return open_backend(url)


def _print_status(st: object) -> None:
    from vmkeep.storage.object_lock import ObjectLockStatus

    assert isinstance(st, ObjectLockStatus)
    lock = f"{st.mode} {st.days} days" if st.immutable else "not enabled"
    console_out.print(f"bucket          {st.bucket}  prefix {st.prefix or '(root)'}", markup=False)
    console_out.print(f"versioning      {st.versioning}", markup=False)
    console_out.print(f"default lock    {lock}", markup=False)
    rule = "installed" if st.lifecycle_rule else "missing (old versions are never reclaimed)"
    console_out.print(f"lifecycle rule  {rule}", markup=False)


@lock_app.command("status")
def status_cmd(repo: RepoOpt = "", json_out: JsonOpt = False, verbose: VerboseOpt = 0) -> None:
    """Show what the bucket enforces: versioning, default retention, vmkeep's lifecycle rule."""
    from vmkeep.storage.object_lock import status

    setup_logging(verbose)
    st = status(_backend(repo))
    if json_out:
        emit_json(st.to_json())
    else:
        _print_status(st)


@lock_app.command("enable")
def enable_cmd(
    days: Annotated[int, typer.Option(min=1, max=36500, help="Retention of every object.")],
    mode: Annotated[
        str, typer.Option(help="compliance (nobody can delete) or governance.")
    ] = "compliance",
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Make every object written from now on immutable for DAYS (bucket admin credentials)."""
    from vmkeep.storage.object_lock import enable

    setup_logging(verbose)
    if mode.upper() not in ("COMPLIANCE", "GOVERNANCE"):
        raise UsageError("--mode must be compliance or governance")
    st = enable(_backend(repo), days, mode)
    if json_out:
        emit_json(st.to_json())
    else:
        _print_status(st)


@lock_app.command("policy")
def policy_cmd(
    role: Annotated[str, typer.Option(help="backup, prune or restore.")] = "backup",
    repo: RepoOpt = "",
) -> None:
    """Print the IAM policy for one set of credentials (JSON, for `aws iam create-policy`)."""
    from vmkeep.storage.object_lock import iam_policy

    url = require_repo(repo)
    if not url.startswith(("s3://", "s3a://")):
        raise UsageError("object lock needs an S3 repository (s3://bucket/prefix)")
    if role not in ("backup", "prune", "restore"):
        raise UsageError("--role must be backup, prune or restore")
    bucket, _, prefix = url.split("://", 1)[1].partition("/")
    console_out.print(json.dumps(iam_policy(bucket, prefix, role), indent=2), markup=False)


@lock_app.command("repair")
def repair_cmd(
    undelete_since: Annotated[
        str | None,
        typer.Option(help="Also remove delete markers made since this ISO time (e.g. 2026-11-20)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would change.")
    ] = False,
    repo: RepoOpt = "",
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Put back the original version of objects a later write replaced (and, with
    --undelete-since, objects deleted since then).  Run `vmkeep check --read-data` afterwards."""
    from vmkeep.storage.object_lock import repair

    setup_logging(verbose)
    since = None
    if undelete_since:
        try:
            since = datetime.fromisoformat(undelete_since)
        except ValueError:
            raise UsageError(f"--undelete-since: not an ISO time: {undelete_since!r}") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    report = repair(_backend(repo), undelete_since=since, dry_run=dry_run)
    if json_out:
        emit_json(report.to_json())
        return
    verb = "would restore" if dry_run else "restored"
    for key in report.restored:
        console_out.print(f"{verb} original version of {key}", markup=False)
    for key in report.undeleted:
        console_out.print(f"{'would undelete' if dry_run else 'undeleted'} {key}", markup=False)
    console_err.print(
        f"{report.examined} objects examined, {len(report.restored)} restored, "
        f"{len(report.undeleted)} undeleted"
    )
