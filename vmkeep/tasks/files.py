"""Thin Prefect tasks for file-level backups and restores: one task per source tree, never per
file or chunk (the data path parallelises inside the task).

The licence check is the ``licence-check`` task of :mod:`vmkeep.tasks.license_check` (the backup
flow calls it before the source is opened); this module takes no licence decision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmkeep.guestfiles.backup import commit_file_point, open_source
from vmkeep.storage.file_backup import FileBackupResult, backup_files
from vmkeep.storage.file_manifest import FilePoint
from vmkeep.storage.repository import Repository
from vmkeep.tasks.runtime import NO_CACHE, retry_transient, task

if TYPE_CHECKING:  # the restore side loads dissect (slow): imported when restoring only
    from vmkeep.guestfiles.restore import FileRestoreSummary

TASK_OPTS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "persist_result": False,
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": retry_transient,
}


@task(name="back-up-files", **TASK_OPTS)
def back_up_file_tree(
    repo: Repository,
    source: str,
    parent: FilePoint | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    excludes: list[str] | None = None,
    one_file_system: bool = False,
    exclude_caches: bool = True,
    workers: int | None = None,
    progress: Any = None,
) -> FileBackupResult:
    """Walk and back up one source tree (packs and index durable; no restore point yet)."""
    src = open_source(
        source,
        storage_options,
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


@task(name="commit-file-point", **TASK_OPTS)
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


@task(name="restore-files", **TASK_OPTS)
def restore_file_paths(
    repo: Repository,
    point: FilePoint,
    paths: list[str],
    target: str,
    *,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Any = None,
) -> FileRestoreSummary:
    """Restore ``paths`` of ``point`` into a local directory or back into a guest (URL)."""
    from vmkeep.guestfiles.restore import restore_paths

    if "://" in target and not target.startswith("file://"):
        from vmkeep.guestfiles.remote_restore import restore_to_url

        return restore_to_url(
            repo, point, paths, target, storage_options or {}, overwrite=overwrite,
            progress=progress,
        )
    return restore_paths(
        repo, point, paths, target.removeprefix("file://"), progress, overwrite=overwrite
    )
