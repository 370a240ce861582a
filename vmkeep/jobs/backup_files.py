"""Job: file-level (incremental) backup of one guest file tree into a repository.

Open the repository → licence check (counted by the machine the source reads — URL host, or for
a local path this host or the server of its network file system; ``client`` is only a label;
refuses before the source is touched) → the previous file point of ``name`` (change detection)
→ back up the tree (one step: walk, reuse unchanged files, chunk, store) → commit the restore
point (manifest last, recording the workload identity the licence counted).

``source`` is a local path (the job runs on a worker inside or beside the guest) or an fsspec
URL: ``sftp://user@guest/path`` (Linux guests), ``smb://user@host/share/path`` (Windows shares).
Credentials never travel in the spec (Prefect records it): the backup step reads them on the
worker — ``source_password_file`` (a file there), ``source_password_block`` (a Prefect Secret
block), else ``VMKEEP_SOURCE_PASSWORD`` / ``VMKEEP_SOURCE_PASSWORD_FILE`` /
``VMKEEP_SOURCE_KEY_FILE`` in its environment (:mod:`vmkeep.tasks.source_credentials`).
``source_options`` and ``storage_options`` take only non-secret fsspec options; a secret in
them is refused inside a Prefect run, and a URL with a password always.  An empty ``source``
or ``name`` is refused by the spec, before the run starts (no empty, nameless point).

Unreadable files do not fail the run: they are left out, listed in ``warnings``, and the summary
says ``partial`` (the CLI exits 3); with ``fail_on_partial`` the job raises
:class:`~vmkeep.errors.PartialBackup` *after* committing the point.
"""

from __future__ import annotations

import time
from typing import Any

from vmkeep.errors import PartialBackup
from vmkeep.guestfiles.backup import (
    client_name,
    previous_point,
    redact,
    remote_protocol,
    summarize,
)
from vmkeep.jobs import licence
from vmkeep.jobs.commit import commit
from vmkeep.jobs.specs import BackupFilesSpec
from vmkeep.licensing.identity import file_source_id
from vmkeep.runtime.base import Runtime
from vmkeep.storage import target_space
from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import WORKLOAD_KEY, catalog_items
from vmkeep.tasks.files import back_up_file_tree, commit_files_point
from vmkeep.tasks.source_credentials import refuse_secret_parameters


def backup_files(spec: BackupFilesSpec, rt: Runtime) -> dict[str, Any]:
    """Back up ``spec.source`` as file restore point ``spec.name``; returns the summary."""
    started = time.monotonic()
    refuse_secret_parameters(
        repo=spec.repo, source=spec.source, storage_options=spec.storage_options
    )
    remote_protocol(spec.source)  # a URL written wrong is refused before anything parses it
    repository = Repository.open(spec.repo, spec.storage_options)
    client = spec.client or client_name(spec.source)
    licence.check(rt, file_sources=[spec.source], catalog=catalog_items(repository))
    with repository.lock("shared") as repo_lock:  # prune sees this backup until it commits
        parent = previous_point(repository, spec.name)
        progress = rt.progress(f"files {redact(spec.source)}", 0)
        try:
            result = rt.step(
                back_up_file_tree,
                repository,
                spec.source,
                parent,
                storage_options=spec.source_options,
                password_file=spec.source_password_file,
                password_block=spec.source_password_block,
                excludes=list(spec.excludes),
                one_file_system=spec.one_file_system,
                exclude_caches=spec.exclude_caches,
                workers=spec.workers,
                progress=progress.advance,
                step_name=f"files {redact(spec.source)}",
            )
        finally:
            progress.close()
        repo_lock.ensure()
        point = commit(
            rt,
            commit_files_point,
            spec.name,
            repository,
            spec.name,
            result,
            source=spec.source,
            client=client,
            parent=parent.id if parent else None,
            meta={WORKLOAD_KEY: file_source_id(spec.source)},
        )
    summary = summarize(point, result)
    summary["duration_s"] = round(time.monotonic() - started, 3)
    summary["warnings"] = [  # the shape of the file warnings: path, reason, detail
        *(summary.get("warnings") or []),
        *({"path": repository.backend.location, "reason": "repository target low on space",
           "detail": w} for w in target_space.backup_warnings(repository)),
    ]
    rt.log.info("files %s: restore point %s committed", redact(spec.source), point.id)
    for warning in summary.get("warnings") or []:
        rt.log.warning("%s", warning)
    row = {k: v for k, v in summary.items() if k != "warnings"}
    rt.publish_table(
        key="backup-files",
        rows=[row],
        description=f"File backup of {redact(spec.source)} as {spec.name}",
    )
    if spec.fail_on_partial and result.partial:
        raise PartialBackup(result.stats.unreadable)
    return summary
