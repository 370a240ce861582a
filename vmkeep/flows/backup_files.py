"""Flow: file-level (incremental) backup of one guest file tree into a repository.

DAG: open the repository → licence check (counted by the machine the source reads — URL host,
or for a local path this host or the server of its network file system; ``client`` is only a
label; refuses before the source is touched) → the previous file point of ``name`` (change
detection) → back up the tree (one task: walk, reuse unchanged files, chunk, store) → commit
the restore point (manifest last, recording the workload identity the licence counted).

``source`` is a local path (the flow runs on a worker inside or beside the guest) or an fsspec
URL: ``sftp://user@guest/path`` (Linux guests), ``smb://user@host/share/path`` (Windows shares);
credentials go in ``source_options`` (e.g. ``{"password": ...}`` or ``{"key_filename": ...}``),
never in the URL that gets recorded.  A daily deployment per guest calls this flow with these
parameters; every run after the first is incremental.

Unreadable files do not fail the run: they are left out, listed in ``warnings``, and the summary
says ``partial`` (the CLI exits 3); with ``fail_on_partial`` the flow raises
:class:`~vmkeep.errors.PartialBackup` *after* committing the point (so Prefect shows the run
failed while the readable data is safe).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vmkeep.errors import PartialBackup
from vmkeep.guestfiles.backup import client_name, previous_point, redact, summarize
from vmkeep.licensing.identity import file_source_id
from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import WORKLOAD_KEY, catalog_items
from vmkeep.tasks.files import back_up_file_tree, commit_files_point
from vmkeep.tasks.license_check import check_run
from vmkeep.tasks.runtime import flow, publish_table, step


@flow(name="backup-files", persist_result=False, log_prints=False)
def backup_files(
    repo: str,
    source: str,
    name: str,
    excludes: list[str] | None = None,
    one_file_system: bool = False,
    exclude_caches: bool = True,
    client: str | None = None,
    storage_options: dict[str, Any] | None = None,
    source_options: dict[str, Any] | None = None,
    workers: int | None = None,
    fail_on_partial: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Back up ``source`` as file restore point ``name``; returns the run summary (CLI JSON)."""
    started = time.monotonic()
    repository = Repository.open(repo, storage_options)
    client = client or client_name(source)
    check_run(file_sources=[source], catalog=catalog_items(repository))
    with repository.lock("shared") as repo_lock:  # prune sees this backup until it commits
        parent = previous_point(repository, name)
        result = step(
            back_up_file_tree,
            repository,
            source,
            parent,
            storage_options=source_options,
            excludes=list(excludes or []),
            one_file_system=one_file_system,
            exclude_caches=exclude_caches,
            workers=workers,
            progress=progress,
        )
        repo_lock.ensure()
        point = step(
            commit_files_point,
            repository,
            name,
            result,
            source=source,
            client=client,
            parent=parent.id if parent else None,
            meta={WORKLOAD_KEY: file_source_id(source)},
        )
    summary = summarize(point, result)
    summary["duration_s"] = round(time.monotonic() - started, 3)
    row = {k: v for k, v in summary.items() if k != "warnings"}
    publish_table(
        key="backup-files", table=[row], description=f"File backup of {redact(source)} as {name}"
    )
    if fail_on_partial and result.partial:
        raise PartialBackup(result.stats.unreadable)
    return summary
