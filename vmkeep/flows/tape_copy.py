"""Flow: copy restore points from a disk repository to tape (the nightly job after backups).

DAG: ``tape-library-slots`` (read from the changer) → ``licence-check`` (Autoloader Support: the
library's slots against the licence, *before* any cartridge moves; exit 17 when refused) →
``tape-copy`` (one task: the job of :mod:`vmkeep.tape.copy`).  Artifacts: the table
``vmkeep-tape-copy`` (one row per tape file) and a markdown summary (cartridges, bytes, MB/s,
files).
"""

from __future__ import annotations

from typing import Any

from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import catalog_items
from vmkeep.tasks.license_check import license_check
from vmkeep.tasks.runtime import flow, publish_markdown, publish_table, step
from vmkeep.tasks.tape import copy_task, library_slots, select_points


@flow(name="tape-copy")
def tape_copy(
    repo: str,
    library: str,
    pool: str = "daily",
    points: list[str] | None = None,
    all_new: bool = False,
    drive: int | None = None,
    licence_file: str | None = None,
) -> dict[str, Any]:
    """Copy ``points`` (or every point not yet on tape with ``all_new``) to ``pool``."""
    repository = Repository.open(repo)
    slots = step(library_slots, library)
    step(
        license_check,
        tape_library=library,
        tape_slots=slots,
        catalog=catalog_items(repository),
        licence_file=licence_file,
        operation="tape-copy",
    )
    ids = select_points(repository, points, all_new)
    if not ids:
        return {"pool": pool, "points": [], "files": [], "cartridges": [], "bytes": 0}
    report: dict[str, Any] = step(copy_task, repository, library, ids, pool, drive)
    publish_table("vmkeep-tape-copy", report["files"], "Tape files written")
    publish_markdown(
        "vmkeep-tape-copy-report",
        f"# Tape copy to pool {pool}\n\n"
        f"* points: {len(ids)}\n* cartridges: {', '.join(report['cartridges'])}\n"
        f"* files: {len(report['files'])}\n* bytes: {report['bytes']}\n"
        f"* rate: {report['mb_per_s']} MB/s\n",
        "Tape copy",
    )
    return report
