"""``vmkeep tape restore-image``: a disk image straight from tape, without a disk repository.

Staged, not streamed: the point's objects are brought from tape into a temporary repository
(:func:`~vmkeep.tape.restore.restore_point`) in ``stage_dir`` (default: beside the target),
the disk is restored from it with the ordinary bit-identical restore
(:func:`vmkeep.storage.disk_restore.restore_disk`), and the staging repository is deleted in
``finally``.  Needs free space for the point's packs next to the target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.repository import Repository
from vmkeep.tape.catalog import FileRecord
from vmkeep.tape.library import Library
from vmkeep.tape.restore import restore_point


def restore_image_from_tape(
    lib: Library,
    records: list[FileRecord],
    ref: str,
    target: str | os.PathLike[str],
    *,
    disk: int = 0,
    stage_dir: str | os.PathLike[str] | None = None,
    drive_index: int | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    """Restore disk ``disk`` of point ``ref`` from tape to the file ``target``."""
    base = Path(stage_dir) if stage_dir else Path(target).resolve().parent
    stage = Path(tempfile.mkdtemp(prefix=".vmkeep-tape-stage-", dir=base))
    try:
        report = restore_point(lib, str(stage / "repo"), ref, catalog_records=records,
                               drive_index=drive_index)
        repo = Repository.open(str(stage / "repo"), password=password)
        written = restore_disk(repo, repo.load_point(report.point), disk, str(target))
        return {**report.to_json(), "disk": disk, "target": str(target), "bytes_restored": written}
    finally:
        shutil.rmtree(stage, ignore_errors=True)
