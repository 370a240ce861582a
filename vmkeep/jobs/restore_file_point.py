"""Job: restore paths of a file restore point, into a local directory or back into a guest.

``target`` is a local directory (hostile-name-safe writer, see :mod:`vmkeep.guestfiles.restore`)
or the same kind of URL the backup read from (``sftp://…``, ``smb://…``; see
:mod:`vmkeep.guestfiles.remote_restore`).  ``paths``: ``["/"]`` for the whole tree, or paths
inside the point, each restored by its own name into ``target``.  Read-only on the repository: no
licence check, no lock.  Returns the summary (``FileRestoreSummary.to_json()``); it does not raise
for per-file problems — callers look at ``ok`` / ``skipped``.  :func:`restore_paths` is the body
(:func:`restore_loaded` once the point is loaded, shared with ``restore files``,
:mod:`vmkeep.jobs.restore_files`, for file points).
"""

from __future__ import annotations

from typing import Any

from vmkeep.jobs.restore_common import byte_progress, files_row, shown_paths
from vmkeep.jobs.restore_specs import RestoreFilePointSpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.disk_restore import refuse_inside_repository
from vmkeep.storage.file_manifest import FilePoint, load_file_point
from vmkeep.storage.repository import Repository
from vmkeep.tasks.files import restore_file_paths
from vmkeep.tasks.source_credentials import refuse_secret_parameters


def restore_paths(spec: RestoreFilePointSpec, rt: Runtime) -> dict[str, Any]:
    """Restore the paths (one step); returns the summary, publishes nothing."""
    refuse_secret_parameters(
        repo=spec.repo,
        target=spec.target,
        storage_options=spec.storage_options,
        target_options=spec.target_options,
    )
    refuse_inside_repository(spec.repo, spec.target)
    repository = Repository.open(spec.repo, spec.storage_options)
    return restore_loaded(spec, rt, repository, load_file_point(repository, spec.point))


def restore_loaded(
    spec: RestoreFilePointSpec, rt: Runtime, repository: Repository, point: FilePoint
) -> dict[str, Any]:
    """:func:`restore_paths` of a point its caller already loaded from the repository it opened
    (``spec.repo`` and ``spec.point`` are not read: nothing is opened or fetched twice, and a
    ``VMKEEP_PASSWORD_COMMAND`` runs once per command)."""
    with byte_progress(rt, f"files of {point.short_id} to {spec.target}", 0) as bar:
        summary = rt.step(
            restore_file_paths,
            repository,
            point,
            list(spec.paths),
            spec.target,
            storage_options=spec.target_options,
            overwrite=spec.overwrite,
            progress=bar.advance,
            ownership=spec.ownership,
            step_name=f"files {shown_paths(spec.paths)} to {spec.target}",
        )
    out: dict[str, Any] = summary.to_json()
    rt.log.info(
        "restored %s file(s) of %s to %s, %d skipped",
        out.get("files", 0), point.short_id, spec.target, len(out.get("skipped", [])),
    )
    return out


def restore_file_point(spec: RestoreFilePointSpec, rt: Runtime) -> dict[str, Any]:
    """Restore ``spec.paths`` of the file point ``spec.point`` into ``spec.target``."""
    out = restore_paths(spec, rt)
    rt.publish_table("restore-files", [files_row(out)], f"Restore of {spec.point} to {spec.target}")
    return out

