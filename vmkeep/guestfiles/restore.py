"""Restore paths of a file restore point into a local directory, point in time, with metadata.

:func:`restore_paths` writes through :func:`vmkeep.disks.safe_restore.restore`, so every guarantee
of that writer holds (no write outside the target, names checked one by one, no symlink in the
target followed, special files and set-id bits refused, hard links re-linked only inside the
restore).  Selection: ``/`` restores the whole tree's *contents* into ``target_dir``; any other
path restores that file or directory *itself* into ``target_dir`` (like ``cp -r``), so several
paths can be restored in one call.  Content, mode, mtime, symlinks and hard links come back;
extended attributes afterwards (files and directories, opened ``O_NOFOLLOW`` component by
component; a refusal — e.g. ``trusted.*`` without root — is a warning).  Owners only with
``preserve_owner`` as root.

Per-entry problems (unsafe names, existing files, unreadable chunks) are warnings in the summary,
never an exception; :attr:`FileRestoreSummary.ok` says whether everything came back (refusals
that lose data — unsafe names, subtrees behind planted links — count as not coming back).
Nothing is retried.  Running it again over the same target skips what exists (or replaces with
``overwrite``); files are published only when complete (see :mod:`vmkeep.disks.safe_restore`),
so what exists after a killed run is whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from vmkeep.disks.fs.base import Entry
from vmkeep.disks.restore_model import DATA_LOSS
from vmkeep.disks.safe_restore import RestoreWarning, restore, unsafe_name
from vmkeep.guestfiles.tree import PointTree, normalize
from vmkeep.storage.file_manifest import FilePoint, load_file_point
from vmkeep.storage.repository import Repository

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class FileRestoreSummary:
    """What a restore wrote and what it refused (``skipped``: stable reason codes)."""

    point: str
    target: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    xattrs: int = 0
    skipped: list[RestoreWarning] = field(default_factory=list)

    @property
    def errors(self) -> list[RestoreWarning]:
        """Warnings that mean selected data did not come back (see ``DATA_LOSS``)."""
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
            "xattrs": self.xattrs,
            "ok": self.ok,
            "errors": len(self.errors),
            "skipped": [
                {"path": w.path, "reason": w.reason, "detail": w.detail} for w in self.skipped
            ],
        }


class _Selection:
    """The safe writer's source for chosen paths: a virtual root holding them by name."""

    def __init__(self, tree: PointTree, paths: list[str]) -> None:
        self.tree = tree
        self.top: dict[str, str] = {}
        for p in paths:
            self.top.setdefault(p.rsplit("/", 1)[-1], p)

    def real(self, path: str) -> str:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return "/"
        head = self.top.get(parts[0])
        if head is None:
            return "/\0missing"  # not found in the point
        return "/".join([head, *parts[1:]])

    def stat(self, path: str, follow: bool = False) -> Entry:
        if self.real(path) == "/":
            return Entry(name="", path="/", type="dir", size=0, mtime_ns=0, mode=0o40755)
        return self.tree.stat(self.real(path))

    def listdir(self, path: str = "/") -> list[Entry]:
        if path in ("", "/"):
            return [self.tree.stat(p) for p in self.top.values()]
        return self.tree.listdir(self.real(path))

    def open(self, path: str, stream: str | None = None) -> BinaryIO:
        return self.tree.open(self.real(path))

    def write_files(
        self, jobs: list[tuple[str, Entry, int]], progress: Callable[[int], None] | None = None
    ) -> tuple[int, dict[str, tuple[str, str]]]:
        """The safe writer's batch API, through :meth:`PointTree.write_files`."""
        return self.tree.write_files(jobs, progress, [self.real(spath) for spath, _, _ in jobs])


def _apply_xattrs(tree: PointTree, selected: str, target: str, summary: FileRestoreSummary) -> None:
    base = normalize(selected)
    keep_name = base != "/"
    prefix = base.rsplit("/", 1)[0] if keep_name else ""
    for fe in tree.point.entries:
        if not fe.xattrs or fe.type not in ("file", "dir"):
            continue
        path = os.fsdecode(fe.path)
        if path != base and not path.startswith(base.rstrip("/") + "/"):
            continue
        comps = [c for c in path[len(prefix) :].split("/") if c] if keep_name else [
            c for c in path.split("/") if c
        ]
        if any(unsafe_name(c) for c in comps):
            continue
        try:
            fd = _open_inside(target, comps, fe.type == "dir")
        except OSError:
            continue  # not restored (refused or skipped): already reported
        try:
            for name, value in fe.xattrs:
                try:
                    os.setxattr(fd, os.fsdecode(name), value)
                    summary.xattrs += 1
                except OSError as exc:
                    summary.skipped.append(RestoreWarning(path, "xattr", f"{name!r}: {exc}"))
        finally:
            os.close(fd)


def _open_inside(target: str, comps: list[str], is_dir: bool) -> int:
    fd = os.open(target, DIR_FLAGS)
    try:
        for i, comp in enumerate(comps):
            last = i == len(comps) - 1
            flags = DIR_FLAGS if (not last or is_dir) else os.O_RDONLY | os.O_NOFOLLOW
            nfd = os.open(comp, flags | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def restore_paths(
    repo: Repository,
    point: FilePoint | str,
    paths: list[str],
    target_dir: str | os.PathLike[str],
    progress: Callable[[int], None] | None = None,
    *,
    overwrite: bool = False,
    preserve_owner: bool = False,
) -> FileRestoreSummary:
    """Restore ``paths`` (``/`` = everything) of ``point`` into ``target_dir`` (must exist)."""
    fp = point if isinstance(point, FilePoint) else load_file_point(repo, point)
    tree = PointTree(repo, fp)
    target = os.fspath(target_dir)
    norm = [normalize(p) for p in (paths or ["/"])]
    for p in norm:
        tree.row(p)  # FsNotFoundError before writing anything
    summary = FileRestoreSummary(fp.id, target)
    opts: dict[str, Any] = {
        "overwrite": overwrite,
        "preserve_owner": preserve_owner,
        "progress": progress,
    }
    whole = "/" in norm
    result = (
        restore(tree, target, "/", **opts)
        if whole
        else restore(_Selection(tree, norm), target, "/", **opts)
    )
    for name in ("files", "dirs", "symlinks", "hardlinks", "bytes"):
        setattr(summary, name, getattr(result, name))
    summary.skipped.extend(result.skipped)
    if any(fe.xattrs for fe in fp.entries):
        for p in ["/"] if whole else norm:
            _apply_xattrs(tree, p, target, summary)
    return summary
