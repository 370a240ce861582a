"""The steps of the tape jobs around :mod:`vmkeep.tape`: slot count, copy, restore (one step per
job step, never per block), and the library opened with its changer shared through the runtime.

Sharing a library across data movers is a runtime concern (:meth:`Runtime.slots
<vmkeep.runtime.base.Runtime.slots>`): every changer turn (locate + move, import, export) holds
the slot ``vmkeep-tape-changer-<library>`` (one), and a copy or restore holds one slot of
``vmkeep-tape-<library>`` (limit: the library's drive count) for its whole run.  Under Prefect
these are global concurrency limits, so movers on different machines queue for the changer and
the drives; in-process they are semaphores, beside the library's own host-wide flocks (changer,
drives, cartridges), which always hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmkeep.runtime.base import NO_RETRY, Runtime, step_def
from vmkeep.storage.repository import Repository
from vmkeep.tape import catalog
from vmkeep.tape.copy import copy_points
from vmkeep.tape.library import Library
from vmkeep.tape.restore import restore_point
from vmkeep.tasks.limits import slot_name


def changer_slot(library: str) -> tuple[str, int]:
    """The slot of ``library``'s changer: one turn at a time, across movers."""
    return slot_name("tape-changer", library), 1


def drive_slot(library: str, drives: int) -> tuple[str, int]:
    """One of ``library``'s drives (limit: its drive count), across movers."""
    return slot_name("tape", library), max(1, drives)


def open_library(rt: Runtime, library: str) -> Library:
    """The library with every changer turn holding :func:`changer_slot` through ``rt``."""
    slot = [changer_slot(library)]
    return Library.open(library, changer_guard=lambda: rt.slots(slot))


@step_def("tape-library-slots", NO_RETRY)
def library_slots(library: str) -> int:
    """Storage slots of the library, read from its changer (what Autoloader Support counts)."""
    with Library.open(library) as lib:
        return lib.slot_count()


@step_def("tape-copy", NO_RETRY)
def copy_step(
    repo: Repository,
    lib: Library,
    point_ids: list[str],
    pool: str,
    drive: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Copy ``point_ids`` onto cartridges of ``pool`` (:func:`vmkeep.tape.copy.copy_points`);
    ``progress(nbytes)`` is fed the bytes written."""
    report: dict[str, Any] = copy_points(
        repo, lib, point_ids, pool, drive_index=drive, progress=progress
    ).to_json()
    return report


@step_def("tape-restore", NO_RETRY)
def restore_step(
    catalog_repo: Repository, lib: Library, point: str, to_repo: str, drive: int | None = None
) -> dict[str, Any]:
    """Read ``point`` back from tape into ``to_repo``
    (:func:`vmkeep.tape.restore.restore_point`)."""
    report: dict[str, Any] = restore_point(
        lib, to_repo, point, catalog_records=catalog.records(catalog_repo), drive_index=drive
    ).to_json()
    return report
