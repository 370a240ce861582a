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
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from vmkeep.browse.point import PointImage
from vmkeep.disks import Entry, FileSystem, RestoreWarning, restore
from vmkeep.disks.errors import DiskError
from vmkeep.disks.restore_model import DATA_LOSS, unsafe_name

MAX_STREAM = 64 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class ImageRestoreSummary:
    point: str
    target: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    streams: int = 0
    chunks_fetched: int = 0
    chunk_size: int = 0
    skipped: list[RestoreWarning] = field(default_factory=list)

    @property
    def errors(self) -> list[RestoreWarning]:
        """Warnings meaning that data did not come back (not refusals by policy)."""
        return [w for w in self.skipped if w.reason in DATA_LOSS]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "target": self.target,
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "hardlinks": self.hardlinks,
            "bytes": self.bytes,
            "streams": self.streams,
            "chunks_fetched": self.chunks_fetched,
            "chunk_size": self.chunk_size,
            "ok": self.ok,
            "errors": len(self.errors),
            "skipped": [
                {"path": w.path, "reason": w.reason, "detail": w.detail} for w in self.skipped
            ],
        }


class Selection:
    """The safe writer's source for chosen paths of one file system: a virtual root holding
    each chosen entry under its own name."""

    def __init__(self, fs: FileSystem, paths: list[str], warnings: list[RestoreWarning]) -> None:
        self.fs = fs
        self.top: dict[str, str] = {}
        for path in paths:
            name = fs.stat(path).name  # raises FsNotFoundError before anything is written
            if name in self.top:
                warnings.append(RestoreWarning(path, "duplicate-name", f"{name!r} chosen twice"))
                continue
            self.top[name] = path

    def real(self, path: str) -> str:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return "/"
        head = self.top.get(parts[0])
        if head is None:
            return "/\0missing"
        return "/".join([head.rstrip("/"), *parts[1:]])

    def stat(self, path: str, follow: bool = False) -> Entry:
        if self.real(path) == "/":
            return Entry(name="", path="/", type="dir", size=0, mtime_ns=0, mode=0o40755)
        return self.fs.stat(self.real(path), follow)

    def listdir(self, path: str = "/") -> list[Entry]:
        if path in ("", "/"):
            out = []
            for name, real in self.top.items():
                e = self.fs.stat(real)
                out.append(replace(e, name=name, path="/" + name))
            return out
        return self.fs.listdir(self.real(path))

    def open(self, path: str, stream: str | None = None) -> BinaryIO:
        return self.fs.open(self.real(path), stream)


def restore_image_paths(
    img: PointImage,
    selections: list[tuple[str, str]],
    target: str,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImageRestoreSummary:
    """Restore ``(volume, path)`` selections of ``img`` into ``target`` (see module doc)."""
    summary = ImageRestoreSummary(img.point.id, target, chunk_size=img.repo.config.image_chunk_size)
    by_volume: dict[str, list[str]] = {}
    for volume, path in selections:
        by_volume.setdefault(img.volume(volume).name, []).append(path)
    sources: list[tuple[FileSystem, Any, str]] = []
    for volume, paths in by_volume.items():  # resolve everything before writing anything
        fs = img.filesystem(volume)
        if any(p.strip("/") == "" for p in paths):
            sources.append((fs, fs, "/"))
        else:
            sources.append((fs, Selection(fs, paths, summary.skipped), "/"))
    for fs, source, top in sources:
        result = restore(source, target, top, overwrite=overwrite, progress=progress)
        for name in ("files", "dirs", "symlinks", "hardlinks", "bytes"):
            setattr(summary, name, getattr(summary, name) + getattr(result, name))
        summary.skipped.extend(result.skipped)
        if fs.fstype == "ntfs":
            skipped = {w.path for w in result.skipped}
            _restore_streams(source, target, skipped, summary)
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
                data = source.open(spath, stream).read(MAX_STREAM + 1)
                if len(data) > MAX_STREAM:
                    raise OSError(0, f"stream {stream!r} larger than 64 KiB")
                os.setxattr(ffd, f"user.{stream}", data)
                summary.streams += 1
            except (OSError, DiskError) as exc:
                detail = f"{stream}: {getattr(exc, 'strerror', None) or exc}"
                summary.skipped.append(RestoreWarning(spath, "stream-error", detail))
    finally:
        os.close(ffd)
