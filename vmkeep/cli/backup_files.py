"""``vmkeep backup files SOURCE --name NAME``: file-level incremental backup of a guest tree.

SOURCE is a local path or an ``sftp://`` / ``smb://`` URL.  Remote credentials come from the
environment, never argv, and are read inside the backup task — never passed to the flow, whose
parameters Prefect records: ``VMKEEP_SOURCE_PASSWORD`` / ``VMKEEP_SOURCE_PASSWORD_FILE``,
``VMKEEP_SOURCE_KEY_FILE`` (SFTP private key); see :mod:`vmkeep.tasks.source_credentials`.
Exit code 3 when some files could not be read (the rest is backed up).
"""

from __future__ import annotations

import os
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
    given_location,
    human_bytes,
    require_repo,
    setup_logging,
    visible,
)
from vmkeep.cli.main import backup_app
from vmkeep.cli.spec_options import spec_from_options
from vmkeep.errors import InputError, PartialBackup, UsageError

#: the largest ``--exclude-file`` read (characters): far beyond any real list of patterns
MAX_PATTERN_FILE = 16 << 20


def read_pattern_files(paths: list[str]) -> list[str]:
    """The exclude patterns of ``--exclude-file`` files, in order (restic's ``--exclude-file``,
    borg's ``--exclude-from``): one per line, surrounding blanks stripped, blank lines and lines
    starting with ``#`` skipped; ``UsageError`` for a file that cannot be read or is larger than
    :data:`MAX_PATTERN_FILE`.  Bytes that are not UTF-8 are kept as a name's are (a pattern for
    a Latin-1 name on a Linux guest matches it, as ``--exclude`` from the shell does)."""
    patterns: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read(MAX_PATTERN_FILE + 1)
        except OSError as exc:
            raise UsageError(f"--exclude-file {path}: {exc.strerror or exc}") from None
        if len(text) > MAX_PATTERN_FILE:
            raise UsageError(f"--exclude-file {path}: larger than {MAX_PATTERN_FILE >> 20} MiB, "
                             "not a pattern file")
        lines = text.splitlines()
        patterns += [s for line in lines if (s := line.strip()) and not s.startswith("#")]
    return patterns


@backup_app.command("files")
def backup_files_cmd(
    source: Annotated[
        str, typer.Argument(parser=given_location,
                            help="Local path, sftp://user@host/path or smb://…")
    ],
    name: Annotated[str, typer.Option("--name", help="Name of the backup chain.")],
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-e", help="Exclude pattern (gitignore-like); repeatable."),
    ] = None,
    exclude_file: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-file",
            parser=given_location,
            help="File of exclude patterns, one per line (blank lines and # comments skipped); "
            "repeatable.",
        ),
    ] = None,
    one_file_system: Annotated[
        bool, typer.Option("--one-file-system", "-x", help="Stay on the source's file system.")
    ] = False,
    exclude_caches: Annotated[
        bool,
        typer.Option("--exclude-caches/--include-caches", help="Skip CACHEDIR.TAG directories."),
    ] = True,
    client: Annotated[
        str | None, typer.Option(
            "--client",
            help="Client label shown in listings (default: the source's host).  The licence "
            "counts the machine the source reads, not this label.",
        )
    ] = None,
    repo: RepoOpt = "",
    orchestrate: OrchestrateOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Back up a file tree; later backups of the same NAME only read changed files."""
    setup_logging(verbose)
    repo_url = require_repo(repo)
    if "://" not in source:
        if not os.path.isdir(source):
            why = "not a directory" if os.path.lexists(source) else "no such file or directory"
            raise InputError(f"{source}: {why} (a file backup's source is a folder)")
        source = os.path.abspath(source)  # recorded as restic records it, whatever the cwd
    from vmkeep.storage.secret_options import refuse_url_password

    refuse_url_password(source, "SOURCE")
    from vmkeep.orchestration import choose

    orchestrate = choose(orchestrate)
    from vmkeep.flows.run import run
    from vmkeep.jobs import specs
    from vmkeep.jobs.backup_files import backup_files

    spec = spec_from_options(
        specs.BackupFilesSpec,
        {
            "repo": repo_url,
            "source": source,
            "name": name,
            "excludes": [*(exclude or []), *read_pattern_files(exclude_file or [])],
            "one_file_system": one_file_system,
            "exclude_caches": exclude_caches,
            "client": client,
        },
    )
    with byte_progress("backing up files", None, not json_out and not orchestrate) as advance:
        summary = run(backup_files, spec, orchestrate, None if orchestrate else advance)
    if json_out:
        emit_json(summary)
    else:
        for w in summary["warnings"][:20]:
            console_err.print(
                f"warning: {visible(w['path'])}: {w['reason']} {visible(w['detail'])}",
                markup=False,
            )
        console_err.print(
            f"restore point {summary['short_id']}: {summary['files']} files "
            f"({summary['files_unchanged']} unchanged, {summary['files_changed']} changed, "
            f"{summary['files_new']} new), read {human_bytes(summary['bytes_read'])}"
            + (f" (holes not read: {human_bytes(summary['bytes_sparse'])})"
               if summary.get("bytes_sparse") else "")
            + f", new {human_bytes(summary['bytes_new'])}, stored "
            f"{human_bytes(summary['bytes_stored'])} in {summary['duration_s']:.1f} s",
            markup=False,
        )
    if summary["partial"]:
        raise PartialBackup(summary["unreadable"])
