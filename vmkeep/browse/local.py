"""Restore chosen paths of image or VM restore points into a local folder.

Contract: :func:`restore_image_paths` takes ``(volume, path)`` selections of one
:class:`~vmkeep.browse.point.PointImage` and writes them into the existing directory ``target``
through :func:`vmkeep.disks.restore` — so nothing is ever written outside ``target`` (hostile
names, links and special files are refused and reported, see :mod:`vmkeep.disks.safe_restore`).

- A volume root (``p1`` or ``p1/``) restores the volume's *contents* into ``target``; any other
  path restores that file, symlink or directory *itself*, by its name (like ``cp -r``).  Two
  selections with the same name: the first wins, the other is reported (``reason``
  ``duplicate-name``).
- Content, mode, mtime and symlinks (as links) come back; NTFS alternate data streams become
  ``user.<stream>`` extended attributes of the restored file (up to 64 KiB each; refusals are
  warnings).  DOS attributes (hidden, system …) are not restored.
- Only the chunks holding the selected files' data and the metadata leading to them are fetched.
- Returns :class:`ImageRestoreSummary`; per-item problems are warnings, never exceptions;
  those that lose selected data (:data:`~vmkeep.disks.restore_model.DATA_LOSS`: unsafe names,
  subtrees behind planted links, read errors …) make it not ``ok``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmkeep.browse.point import PointImage
from vmkeep.disks import FileSystem, RestoreWarning, restore
from vmkeep.disks.dump import TarDump, dump_file
from vmkeep.disks.errors import DiskError
from vmkeep.disks.restore_model import (
    Ownership,
    RestoreSummary,
    StreamNotKept,
    stream_xattr,
    unsafe_name,
)
from vmkeep.disks.selection import Selection, TargetNames
from vmkeep.storage.stream_out import STDOUT, StreamWriter

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(kw_only=True)
class ImageRestoreSummary(RestoreSummary):
    """A restore into a folder out of an image point (NTFS streams, chunks fetched)."""

    point: str
    target: str
    streams: int = 0
    chunks_fetched: int = 0
    chunk_size: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "target": self.target,
            **self.counts_json(),
            "streams": self.streams,
            "chunks_fetched": self.chunks_fetched,
            "chunk_size": self.chunk_size,
            **self.outcome_json(),
        }


def restore_image_paths(
    img: PointImage,
    selections: list[tuple[str, str]],
    target: str,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    ownership: Ownership = Ownership(),
) -> ImageRestoreSummary:
    """Restore ``(volume, path)`` selections of ``img`` into ``target`` (see module doc);
    ``ownership`` as :func:`vmkeep.disks.safe_restore.restore` has it (NTFS volumes have no
    numeric owners: their files get root's)."""
    summary = ImageRestoreSummary(
        point=img.point.id, target=target, chunk_size=img.repo.config.image_chunk_size
    )
    for fs, source in _selected(img, selections, summary):  # resolved before anything is written
        result = restore(source, target, "/", overwrite=overwrite, progress=progress,
                         ownership=ownership)
        summary.add(result)
        if fs.fstype == "ntfs":
            skipped = {w.path for w in result.skipped}
            _restore_streams(source, target, skipped, summary)
    summary.chunks_fetched = img.fetches
    return summary


def _selected(
    img: PointImage, selections: list[tuple[str, str]], summary: ImageRestoreSummary
) -> list[tuple[FileSystem, Any]]:
    """Per volume, its file system and what to take from it: the whole volume, or a selection
    view whose root holds the chosen paths by their names — names unique across volumes, as
    in one target folder (refusals go to ``summary.skipped``)."""
    by_volume: dict[str, list[str]] = {}
    for volume, path in selections:
        by_volume.setdefault(img.volume(volume).name, []).append(path)
    sources: list[tuple[FileSystem, Any]] = []
    names = TargetNames()  # one target folder: names chosen so far, across volumes
    for volume, paths in by_volume.items():
        fs = img.filesystem(volume)
        if any(p.strip("/") == "" for p in paths):
            sources.append((fs, fs))
        else:
            sources.append((fs, Selection(fs, paths, summary.skipped, names, f"{volume}:")))
    return sources


def dump_image_paths(
    img: PointImage,
    selections: list[tuple[str, str]],
    out: StreamWriter,
    progress: Callable[[int], None] | None = None,
) -> ImageRestoreSummary:
    """``(volume, path)`` selections of ``img`` onto the stream ``out`` (``restore files …
    --to -``, :mod:`vmkeep.disks.dump`): one regular file as its bytes, else a tar archive of
    what :func:`restore_image_paths` would create (NTFS alternate data streams as ``user.``
    extended attributes, hard links as links)."""
    summary = ImageRestoreSummary(
        point=img.point.id, target=STDOUT, chunk_size=img.repo.config.image_chunk_size
    )
    if len(selections) == 1 and selections[0][1].strip("/"):
        volume, path = selections[0]
        fs = img.filesystem(img.volume(volume).name)
        entry = fs.stat(path, follow=True)
        if entry.type == "file":
            summary.add(dump_file(fs, path, entry, out, progress))
            summary.chunks_fetched = img.fetches
            return summary
    with TarDump(out, progress) as archive:
        for _fs, source in _selected(img, selections, summary):
            archive.add_tree(source)
    summary.add(archive.summary)
    summary.chunks_fetched = img.fetches
    return summary


def _restore_streams(
    source: Any, target: str, skipped: set[str], summary: ImageRestoreSummary
) -> None:
    """NTFS alternate data streams -> ``user.<stream>`` xattrs of the files just restored."""
    pending: list[tuple[str, tuple[str, ...]]] = [("/", ())]
    while pending:
        spath, comps = pending.pop()
        try:
            entries = source.listdir(spath)
        except DiskError:
            continue
        for e in entries:
            child = ("" if spath == "/" else spath) + "/" + e.name
            if unsafe_name(e.name) or child in skipped:
                continue
            if e.type == "dir":
                pending.append((child, (*comps, e.name)))
            elif e.type == "file" and e.streams:
                _set_streams(source, child, (*comps, e.name), e.streams, target, summary)


def _set_streams(
    source: Any,
    spath: str,
    comps: tuple[str, ...],
    streams: tuple[str, ...],
    target: str,
    summary: ImageRestoreSummary,
) -> None:
    fd = os.open(target, DIR_FLAGS)
    try:
        for comp in comps[:-1]:
            nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(comps[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        os.close(fd)
        summary.skipped.append(RestoreWarning(spath, "stream-error", exc.strerror or str(exc)))
        return
    os.close(fd)
    try:
        for stream in streams:
            try:
                name, data = stream_xattr(source, spath, stream)
                os.setxattr(ffd, name, data)
                summary.streams += 1
            except StreamNotKept as exc:
                summary.skipped.append(RestoreWarning(spath, "stream-error", str(exc)))
            except OSError as exc:
                detail = f"{stream}: {exc.strerror or exc}"
                summary.skipped.append(RestoreWarning(spath, "stream-error", detail))
    finally:
        os.close(ffd)
