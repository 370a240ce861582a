"""Thin Prefect tasks for file-level backups and restores: one task per source tree, never per
file or chunk (the data path parallelises inside the task).

The licence check runs Prefect's ``licence-check`` task when Prefect is loaded; in direct mode
(the plain CLI without a Prefect API) it takes the same decision without importing Prefect
(seconds of start-up a daily incremental should not pay).  Either way it refuses before the
source is opened.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from vmkeep.guestfiles.backup import commit_file_point, open_source
from vmkeep.runtime.base import NO_RETRY, step_def
from vmkeep.storage.file_backup import FileBackupResult, backup_files
from vmkeep.storage.file_manifest import KIND, FilePoint
from vmkeep.storage.repository import Repository
from vmkeep.tasks.runtime import direct_mode, step

if TYPE_CHECKING:  # the restore side loads dissect (slow): imported when restoring only
    from vmkeep.guestfiles.restore import FileRestoreSummary



def file_catalog(repo: Repository) -> list[dict[str, Any]]:
    """The repository's protected file clients, one item per file restore point (headers only)."""
    items = []
    for s in repo.list_points():
        if s.kind == KIND:
            client = str(s.meta.get("client") or s.name)
            items.append({"kind": "files", "machine": client, "time": s.time.isoformat()})
    return items


def check_file_licence(repo: Repository, client: str) -> dict[str, Any]:
    """Licence decision for backing up ``client``'s files; raises ``LicenceRefused`` (exit 17)."""
    catalog = file_catalog(repo)
    if direct_mode() and "prefect" not in sys.modules:
        from vmkeep import clock
        from vmkeep.licensing.check import check_licence
        from vmkeep.licensing.store import load_state
        from vmkeep.licensing.usage import run_usage, usage_from_items

        decision = check_licence(
            load_state().for_check,
            usage_from_items(catalog),
            run_usage([], [client]),
            clock.now(),
            "backup",
        )
        if decision.refusal is not None:
            raise decision.refusal
        return decision.as_dict()
    from vmkeep.tasks.license_check import license_check

    return step(license_check, file_clients=[client], catalog=catalog)


@step_def("back-up-files")
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


@step_def("commit-file-point", NO_RETRY)
def commit_files_point(
    repo: Repository,
    name: str,
    result: FileBackupResult,
    *,
    source: str,
    client: str,
    parent: str | None = None,
) -> FilePoint:
    """Publish the file restore point (manifest last)."""
    return commit_file_point(repo, name, result, source=source, client=client, parent=parent)


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
