"""Restore chosen paths of image or VM restore points into a remote folder over SFTP or SMB.

Contract: :func:`restore_image_paths_to_url` takes the ``(volume, path)`` selections of one
:class:`~vmkeep.browse.point.PointImage`, as :func:`vmkeep.browse.local.restore_image_paths`
does, and writes them into the existing directory ``url`` (``sftp://[USER@]HOST/DIR``,
``smb://HOST/SHARE/DIR``) through :func:`vmkeep.guestfiles.remote_restore.write_sources`: the
same hostile-name, link and overwrite rules as a file point's restore to a URL, whatever the
guest's file system (a Windows guest's NTFS volume into a Linux server's SFTP folder, an ext4
volume into a share).  A volume root restores the volume's contents; other paths by their name,
each name once across volumes (``duplicate-name`` otherwise).  What the protocol carries comes
back (SFTP: modes, whole-second mtimes, symlinks; SMB: microsecond mtimes); NTFS alternate data
streams and owners do not.  Every selection is looked up before anything is written; only the
chunks holding the selected files' data and the metadata leading to them are fetched.  Returns
:class:`~vmkeep.browse.local.ImageRestoreSummary` (``streams`` 0); per-item problems are
warnings, a lost connection raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmkeep.browse.local import ImageRestoreSummary
from vmkeep.browse.point import PointImage
from vmkeep.disks.restore_model import EntrySource
from vmkeep.guestfiles.backup import redact
from vmkeep.guestfiles.remote_restore import connect, write_sources


def restore_image_paths_to_url(
    img: PointImage,
    selections: list[tuple[str, str]],
    url: str,
    options: dict[str, Any],
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImageRestoreSummary:
    """Restore ``(volume, path)`` selections of ``img`` into the remote directory ``url``
    (``options``: the fsspec options with its credentials; see the module docstring)."""
    summary = ImageRestoreSummary(
        point=img.point.id, target=redact(url), chunk_size=img.repo.config.image_chunk_size
    )
    by_volume: dict[str, list[str]] = {}
    for volume, path in selections:
        by_volume.setdefault(img.volume(volume).name, []).append(path)
    sources: list[tuple[str, EntrySource, list[str]]] = [
        (f"{volume}:", img.filesystem(volume), paths) for volume, paths in by_volume.items()
    ]
    target = connect(url, options)
    try:
        write_sources(sources, target, summary, overwrite=overwrite, progress=progress)
    finally:
        target.close()
    summary.chunks_fetched = img.fetches
    return summary
