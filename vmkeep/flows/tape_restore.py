"""Flow: bring a restore point back from tape into a disk repository.

DAG: ``tape-library-slots`` → ``licence-check`` (operation ``restore``: read-only, never
refused, reported) → ``tape-restore`` (one task).  Artifact: a table of the files read.
"""

from __future__ import annotations

from typing import Any

from vmkeep.storage.repository import Repository
from vmkeep.tasks.license_check import license_check
from vmkeep.tasks.runtime import flow, publish_table, step
from vmkeep.tasks.tape import library_slots, restore_task


@flow(name="tape-restore")
def tape_restore(
    point: str,
    to_repo: str,
    library: str,
    catalog_repo: str | None = None,
    drive: int | None = None,
) -> dict[str, Any]:
    """Restore ``point`` (id or prefix) into ``to_repo``; the catalog comes from
    ``catalog_repo`` (default: ``to_repo``, e.g. after ``tape scan``)."""
    source = Repository.open(catalog_repo or to_repo)
    slots = step(library_slots, library)
    step(license_check, tape_library=library, tape_slots=slots, operation="restore")
    report: dict[str, Any] = step(restore_task, source, library, point, to_repo, drive)
    publish_table("vmkeep-tape-restore", report["files"], "Tape files read")
    return report
