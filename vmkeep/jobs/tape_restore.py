"""Job: bring a restore point back from tape into a disk repository.

``tape-library-slots`` → ``licence-check`` (operation ``restore``: read-only, never refused,
reported) → ``tape-restore`` (one step) holding one drive slot of the library, every changer
turn holding the changer slot (:mod:`vmkeep.tasks.tape`).  Report: the table
``vmkeep-tape-restore`` of the files read.  The tape catalog comes from ``catalog_repo``
(default: ``to_repo``, e.g. after ``tape scan``).
"""

from __future__ import annotations

from typing import Any

from vmkeep.jobs import licence
from vmkeep.jobs.maintenance_specs import TapeRestoreSpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.errors import RepositoryNotFound
from vmkeep.storage.repository import Repository
from vmkeep.tape.errors import NoCatalogRepository
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.tasks.tape import drive_slot, library_slots, open_library, restore_step


def tape_restore(spec: TapeRestoreSpec, rt: Runtime) -> dict[str, Any]:
    """Restore ``spec.point`` (id or prefix) into ``spec.to_repo``; returns the restore report
    (``objects``, ``bytes``, ``cartridges``, ``files`` …)."""
    refuse_secret_parameters(to_repo=spec.to_repo, catalog_repo=spec.catalog_repo)
    location = spec.catalog_repo or spec.to_repo
    try:
        source = Repository.open(location)
    except RepositoryNotFound:
        raise NoCatalogRepository(location) from None
    slots = rt.step(library_slots, spec.library)
    licence.check(rt, tape_library=spec.library, tape_slots=slots, operation="restore")
    with open_library(rt, spec.library) as lib, rt.slots(
        [drive_slot(spec.library, len(lib.cfg.drives))]
    ):
        report: dict[str, Any] = rt.step(
            restore_step, source, lib, spec.point, spec.to_repo, spec.drive,
            step_name=f"tape-restore {spec.point}",
        )
    rt.log.info(
        "tape restore of %s into %s: %d object(s), %d bytes from %s",
        spec.point, spec.to_repo, report["objects"], report["bytes"],
        ", ".join(report["cartridges"]),
    )
    rt.publish_table("vmkeep-tape-restore", report["files"], "Tape files read")
    return report
