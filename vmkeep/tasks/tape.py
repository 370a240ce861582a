"""Thin Prefect tasks around :mod:`vmkeep.tape`: slot count, copy, restore, scan (one task per
job step, never per block).  Drives are held by the library's locks; across data movers the
flows also take the global concurrency limit ``vmkeep-tape-<library>`` (one slot per drive), and
every changer turn takes ``vmkeep-tape-changer-<library>`` (one slot)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from vmkeep.storage.repository import Repository
from vmkeep.tape import catalog
from vmkeep.tape.copy import copy_points
from vmkeep.tape.library import Library
from vmkeep.tape.restore import restore_point
from vmkeep.tasks.limits import slot_name
from vmkeep.tasks.runtime import NO_CACHE, direct_mode, task


@contextlib.contextmanager
def hold_drive(library: str, drives: int) -> Iterator[str]:
    """One slot of ``vmkeep-tape-<library>`` (limit: the library's drive count) for the block.

    Orchestrated, it is a Prefect global concurrency limit, so movers on different machines
    sharing one library queue for its drives; direct runs rely on the library's per-host drive
    and cartridge locks alone.
    """
    name = slot_name("tape", library)
    if direct_mode():
        yield name
        return
    from prefect.concurrency.sync import concurrency

    from vmkeep.runtime.prefect_runtime import _ensure_limits

    _ensure_limits([(name, max(1, drives))])
    with concurrency(name, occupy=1):
        yield name


def changer_guard(library: str) -> Callable[[], AbstractContextManager[object]] | None:
    """The cross-mover guard of ``library``'s changer: a Prefect global concurrency limit of
    one slot, held for one changer turn (locate + move).  None in direct runs (the library's
    host-wide flock alone)."""
    if direct_mode():
        return None
    name = slot_name("tape-changer", library)

    @contextlib.contextmanager
    def turn() -> Iterator[None]:
        from prefect.concurrency.sync import concurrency

        from vmkeep.runtime.prefect_runtime import _ensure_limits

        _ensure_limits([(name, 1)])
        with concurrency(name, occupy=1):
            yield

    return turn


def open_library(library: str) -> Library:
    """The library with its changer shared safely across data movers."""
    return Library.open(library, changer_guard=changer_guard(library))


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
    with open_library(library) as lib, hold_drive(library, len(lib.cfg.drives)):
        return copy_points(repo, lib, point_ids, pool, drive_index=drive).to_json()


@task(name="tape-restore", cache_policy=NO_CACHE, retries=0)
def restore_task(catalog_repo: Repository, library: str, point: str, to_repo: str,
                 drive: int | None = None) -> dict[str, Any]:
    with open_library(library) as lib, hold_drive(library, len(lib.cfg.drives)):
        return restore_point(lib, to_repo, point, catalog_records=catalog.records(catalog_repo),
                             drive_index=drive).to_json()
