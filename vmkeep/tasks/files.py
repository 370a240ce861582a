"""The steps of file-level backups and restores: one step per source tree, never per file or
chunk (the data path parallelises inside the step); a Prefect task each under Prefect.

The licence check is the ``licence-check`` step (:mod:`vmkeep.jobs.licence`, the backup job
calls it before the source is opened); this module takes no licence decision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmkeep.disks.restore_model import Ownership, refuse_ownership
from vmkeep.guestfiles.backup import commit_file_point, open_source
from vmkeep.runtime.base import NO_RETRY, step_def
from vmkeep.storage.file_backup import FileBackupResult, backup_files
from vmkeep.storage.file_manifest import FilePoint
from vmkeep.storage.repository import Repository
from vmkeep.tasks.source_credentials import source_options

if TYPE_CHECKING:  # the restore side loads dissect (slow): imported when restoring only
    from vmkeep.guestfiles.restore import FileRestoreSummary


@step_def("back-up-files")
def back_up_file_tree(
    repo: Repository,
    source: str,
    parent: FilePoint | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    password_file: str | None = None,
    password_block: str | None = None,
    excludes: list[str] | None = None,
    one_file_system: bool = False,
    exclude_caches: bool = True,
    workers: int | None = None,
    progress: Any = None,
) -> FileBackupResult:
    """Walk and back up one source tree (packs and index durable; no restore point yet).
    Credentials are resolved here, on the worker (:mod:`vmkeep.tasks.source_credentials`)."""
    src = open_source(
        source,
        source_options(
            source, storage_options, password_file=password_file, password_block=password_block
        ),
        excludes or [],
        one_file_system=one_file_system,
        exclude_caches=exclude_caches,
    )
    try:
        return backup_files(repo, src, parent, workers=workers, progress=progress)
    finally:
        close = getattr(src, "close", None)
        if callable(close):
            close()


@step_def("commit-file-point", NO_RETRY)
def commit_files_point(
    repo: Repository,
    name: str,
    result: FileBackupResult,
    *,
    source: str,
    client: str,
    parent: str | None = None,
    meta: dict[str, Any] | None = None,
) -> FilePoint:
    """Publish the file restore point (manifest last)."""
    return commit_file_point(
        repo, name, result, source=source, client=client, parent=parent, meta=meta
    )


@step_def("restore-files")
def restore_file_paths(
    repo: Repository,
    point: FilePoint,
    paths: list[str],
    target: str,
    *,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Any = None,
    ownership: Ownership = Ownership(),
) -> FileRestoreSummary:
    """Restore ``paths`` of ``point`` into a local directory or back into a guest (URL);
    ``ownership`` only into a local directory (:func:`refuse_ownership`)."""
    from vmkeep.guestfiles.backup import remote_protocol
    from vmkeep.guestfiles.restore import restore_paths

    remote = remote_protocol(target, "target") is not None
    refuse_ownership(ownership, target, local=not remote)
    if remote:
        from vmkeep.guestfiles.remote_restore import restore_to_url

        return restore_to_url(
            repo, point, paths, target,
            source_options(target, storage_options, what="target_options"),
            overwrite=overwrite, progress=progress,
        )
    return restore_paths(
        repo, point, paths, target.removeprefix("file://"), progress, overwrite=overwrite,
        ownership=ownership,
    )


@step_def("dump-files", NO_RETRY)
def dump_file_paths(
    repo: Repository, point: FilePoint, paths: list[str], progress: Any = None
) -> dict[str, Any]:
    """``paths`` of a file point onto standard output (``restore files … --to -``): one regular
    file as its bytes, else a tar archive (:func:`vmkeep.guestfiles.restore.dump_paths`).  Not
    retried: the stream has begun."""
    from vmkeep.guestfiles.restore import dump_paths
    from vmkeep.storage.stream_out import StreamWriter

    return dump_paths(repo, point, paths, StreamWriter(), progress).to_json()
