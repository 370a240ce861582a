"""Thin Prefect tasks around :mod:`vmkeep.tape`: slot count, copy, restore, scan (one task per
job step, never per block).  Drives are held by the library's locks; across data movers the
flows also take the global concurrency limit ``vmkeep-tape-<library>`` (one slot per drive)."""

from __future__ import annotations

from typing import Any

from vmkeep.storage.repository import Repository
from vmkeep.tape import catalog
from vmkeep.tape.copy import copy_points
from vmkeep.tape.library import Library
from vmkeep.tape.restore import restore_point
from vmkeep.tasks.runtime import NO_CACHE, task


@task(name="tape-library-slots", cache_policy=NO_CACHE, retries=0)
def library_slots(library: str) -> int:
    """Storage slots of the library, read from its changer (what Autoloader Support counts)."""
    with Library.open(library) as lib:
        return lib.slot_count()


def select_points(repo: Repository, points: list[str] | None, all_new: bool) -> list[str]:
    """Full ids: the given refs, or (``all_new``) every point not yet in the tape catalog."""
    if all_new:
        done = catalog.points_on_tape(repo)
        return [p for p in repo.point_ids() if p not in done]
    return [repo.resolve(p) for p in points or []]


@task(name="tape-copy", cache_policy=NO_CACHE, retries=0)
def copy_task(repo: Repository, library: str, point_ids: list[str], pool: str,
              drive: int | None = None) -> dict[str, Any]:
    with Library.open(library) as lib:
        return copy_points(repo, lib, point_ids, pool, drive_index=drive).to_json()


@task(name="tape-restore", cache_policy=NO_CACHE, retries=0)
def restore_task(catalog_repo: Repository, library: str, point: str, to_repo: str,
                 drive: int | None = None) -> dict[str, Any]:
    with Library.open(library) as lib:
        return restore_point(lib, to_repo, point, catalog_records=catalog.records(catalog_repo),
                             drive_index=drive).to_json()
