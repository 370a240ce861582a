"""Job: copy restore points from a disk repository to tape (the nightly job after backups).

``tape-library-slots`` (read from the changer) → ``licence-check`` (Autoloader Support: the
library's slots against the licence, *before* any cartridge moves; exit 17 when refused) → the
points (given, or every point not yet on tape) → ``tape-copy`` (one step: :mod:`vmkeep.tape.copy`)
holding one drive slot of the library, every changer turn holding the changer slot
(:mod:`vmkeep.tasks.tape`).  Reports: the table ``vmkeep-tape-copy`` (one row per tape file) and a
markdown summary ``vmkeep-tape-copy-report`` (cartridges, bytes, MB/s, files).
"""

from __future__ import annotations

from typing import Any

from vmkeep.jobs import licence
from vmkeep.jobs.maintenance_specs import TapeCopySpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.repository import DamagedPoint, Repository
from vmkeep.tape.catalog import points_to_copy
from vmkeep.tasks.catalog import catalog_items
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.tasks.tape import copy_step, drive_slot, library_slots, open_library


def tape_copy(spec: TapeCopySpec, rt: Runtime) -> dict[str, Any]:
    """Copy ``spec.points`` (or every point not yet in the pool, or the newest of each name) to
    ``spec.pool``; returns the copy report (``points``, ``files``, ``cartridges``, ``bytes``,
    ``mb_per_s`` …)."""
    refuse_secret_parameters(repo=spec.repo)
    repository = Repository.open(spec.repo)
    slots = rt.step(library_slots, spec.library)
    licence.check(
        rt,
        tape_library=spec.library,
        tape_slots=slots,
        catalog=catalog_items(repository),
        licence_file=spec.licence_file,
        operation="tape-copy",
    )
    damaged: list[DamagedPoint] = []
    if spec.points:  # named: in the given order, whatever the pool holds
        ids = [repository.resolve(p) for p in spec.points]
    else:  # all_new or latest (the spec has exactly one of the three)
        ids = points_to_copy(repository, spec.pool, newest_only=spec.latest, damaged=damaged)
    for bad in damaged:  # `vmkeep check` says more; the copy goes on with the readable points
        rt.log.warning("restore point %s is not copied to tape: %s", bad.id[:12], bad.reason)
    if not ids:
        rt.log.info("tape copy to pool %s: no restore point to copy", spec.pool)
        return {"pool": spec.pool, "points": [], "files": [], "cartridges": [], "bytes": 0}
    progress = rt.progress(f"tape-copy pool={spec.pool}", 0)  # total: not known up front
    try:
        with open_library(rt, spec.library) as lib, rt.slots(
            [drive_slot(spec.library, len(lib.cfg.drives))]
        ):
            report: dict[str, Any] = rt.step(
                copy_step, repository, lib, ids, spec.pool, spec.drive, progress.advance,
                step_name=f"tape-copy {len(ids)} point(s) pool={spec.pool}",
            )
    except BaseException:
        progress.close(failed=True)
        raise
    progress.close()
    rt.log.info(
        "tape copy to pool %s: %d point(s), %d bytes on %s (%s MB/s)",
        spec.pool, len(ids), report["bytes"], ", ".join(report["cartridges"]),
        report.get("mb_per_s"),
    )
    for warning in report.get("warnings", []):
        rt.log.warning("tape copy to pool %s: %s", spec.pool, warning)
    rt.publish_table("vmkeep-tape-copy", report["files"], "Tape files written")
    rt.publish_markdown(
        "vmkeep-tape-copy-report",
        f"# Tape copy to pool {spec.pool}\n\n"
        f"* points: {len(ids)}\n* cartridges: {', '.join(report['cartridges'])}\n"
        f"* files: {len(report['files'])}\n* bytes: {report['bytes']}\n"
        f"* rate: {report.get('mb_per_s')} MB/s\n",
        "Tape copy",
    )
    return report
