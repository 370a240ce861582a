"""Flow: restore paths of a file restore point, into a local directory or back into a guest.

``target`` is a local directory (hostile-name-safe writer, see :mod:`vmkeep.guestfiles.restore`)
or the same kind of URL the backup read from (``sftp://…``, ``smb://…``; see
:mod:`vmkeep.guestfiles.remote_restore`).  ``paths``: ``["/"]`` for the whole tree, or paths
inside the point, each restored by its own name into ``target``.  Read-only on the repository: no
licence check, no lock.  Returns the summary (``FileRestoreSummary.to_json()``); it does not raise
for per-file problems — callers look at ``ok`` / ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmkeep.storage.file_manifest import load_file_point
from vmkeep.storage.repository import Repository
from vmkeep.tasks.files import restore_file_paths
from vmkeep.tasks.runtime import flow, publish_table, step
from vmkeep.tasks.source_credentials import refuse_secret_parameters


@flow(name="restore-file-point", persist_result=False, log_prints=False)
def restore_file_point(
    repo: str,
    point: str,
    target: str,
    paths: list[str] | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    target_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Restore ``paths`` (default ``["/"]``) of ``point`` (id, prefix, ``NAME@latest``)."""
    refuse_secret_parameters(
        repo=repo, target=target, storage_options=storage_options, target_options=target_options
    )
    repository = Repository.open(repo, storage_options)
    fp = load_file_point(repository, point)
    summary = step(
        restore_file_paths,
        repository,
        fp,
        list(paths or ["/"]),
        target,
        storage_options=target_options,
        overwrite=overwrite,
        progress=progress,
    )
    out: dict[str, Any] = summary.to_json()
    row = {k: v for k, v in out.items() if k != "skipped"}
    row["skipped"] = len(summary.skipped)
    publish_table(key="restore-files", table=[row], description=f"Restore of {fp.short_id}")
    return out
