"""The step of ``vmkeep copy``: one restore point copied into another repository (never per chunk).

Not retried (``NO_RETRY``): the step commits the copy (manifest last) — an interrupted step
leaves no point in the destination, and the next run copies what is still missing.  No Prefect
and no pyVmomi here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from vmkeep.runtime.base import NO_RETRY, step_def
from vmkeep.storage.errors import PointNotFound, StorageError
from vmkeep.storage.file_manifest import KIND as FILES
from vmkeep.storage.file_manifest import FilePoint, load_file_point, save_file_point
from vmkeep.storage.point_copy import (
    CopyBase,
    CopySourceDamaged,
    EarlierCopy,
    copy_image_point,
    copy_meta,
)
from vmkeep.storage.repository import PointSummary, Repository

T = TypeVar("T")


@step_def("copy-point", NO_RETRY)
def copy_point(
    source: Repository,
    dest: Repository,
    summary: PointSummary,
    base: EarlierCopy | None,
    progress: Any = None,
) -> dict[str, Any]:
    """Copy source point ``summary`` into ``dest``; ``base``: the newest earlier copy of the
    same name and kind, or None.  Returns the point's row of the copy summary."""
    point_id = summary.id
    if summary.kind == FILES:
        return _copy_files(source, dest, point_id, base, progress)
    point = _source_point(source, point_id, source.load_point)
    copy_base = None
    if base is not None:
        source_base = None
        with contextlib.suppress(PointNotFound):  # forgotten since: every chunk is compared
            source_base = source.load_point(base.source_id)
        copy_base = CopyBase(dest.load_point(base.dest_id), source_base)
    done = copy_image_point(source, dest, point, copy_base,
                            parent=base.dest_id if base is not None else None,
                            progress=progress)
    return _row(point_id, done.point.id, summary.name, summary.kind, summary.time.isoformat(),
                bytes_read=done.bytes_read, bytes_new=done.bytes_new,
                bytes_stored=done.bytes_stored, duration_s=done.duration_s, disks=done.disks)


def _copy_files(
    source: Repository, dest: Repository, point_id: str, base: EarlierCopy | None,
    progress: Any,
) -> dict[str, Any]:
    from vmkeep.guestfiles.point_source import PointSource
    from vmkeep.storage.file_backup import backup_files

    started = time.monotonic()
    point = _source_point(source, point_id, lambda ref: load_file_point(source, ref))
    parent = load_file_point(dest, base.dest_id) if base is not None else None
    result = backup_files(dest, PointSource(source, point), parent, progress=progress)
    problems = result.warnings  # PointSource reports only what the source could not deliver
    if problems:  # never a copy with files left out or cut short
        first = problems[0]
        raise CopySourceDamaged(
            point.short_id, f"{len(problems)} file(s) could not be read, the first {first.path}"
            f" ({first.reason}: {first.detail})")
    copied = FilePoint(
        name=point.name, time=point.time, source=point.source, client=point.client,
        parent=parent.id if parent is not None else None, hostname=point.hostname,
        stats=dict(point.stats), meta=copy_meta(source, point.id, point.meta),
        table=result.table,
    )
    save_file_point(dest, copied)
    stats = result.stats
    return _row(point_id, copied.id, point.name, FILES, point.time.isoformat(),
                bytes_read=stats.bytes_read, bytes_new=stats.bytes_new,
                bytes_stored=stats.bytes_stored,
                duration_s=round(time.monotonic() - started, 3),
                files=stats.files, files_read=stats.files_read)


def _source_point(source: Repository, point_id: str, load: Callable[[str], T]) -> T:
    """``load(point_id)``; a manifest that no longer reads (damaged since the listing) fails
    this point's copy alone (:class:`CopySourceDamaged`), not the job."""
    try:
        return load(point_id)
    except StorageError as exc:
        if exc.is_transient or isinstance(exc, PointNotFound):
            raise
        raise CopySourceDamaged(point_id[:8], exc.get_message()) from exc


def _row(source_id: str, dest_id: str, name: str, kind: str, when: str, **more: Any
         ) -> dict[str, Any]:
    return {"source": source_id, "id": dest_id, "short_id": dest_id[:8], "name": name,
            "kind": kind, "time": when, **more}
