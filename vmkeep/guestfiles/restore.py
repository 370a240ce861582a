"""Restore paths of a file restore point into a local directory, point in time, with metadata.

:func:`restore_paths` writes through :func:`vmkeep.disks.safe_restore.restore`, so every guarantee
of that writer holds (no write outside the target, names checked one by one, no symlink in the
target followed, special files and set-id bits refused, hard links re-linked only inside the
restore).  Selection: ``/`` restores the whole tree's *contents* into ``target_dir``; any other
path restores that file or directory *itself* into ``target_dir`` (like ``cp -r``), so several
paths can be restored in one call.  Content, mode, mtime, symlinks and hard links come back;
extended attributes afterwards (files and directories, opened ``O_NOFOLLOW`` component by
component; a refusal — e.g. ``trusted.*`` without root — is a warning).  Owners only with
``preserve_owner`` as root, set-uid/set-gid bits only with ``keep_setid``.

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
from dataclasses import dataclass
from typing import Any

from vmkeep.disks.dump import TarDump, dump_file
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.restore_model import Ownership, RestoreSummary
from vmkeep.disks.safe_restore import RestoreWarning, restore, unsafe_name
from vmkeep.disks.selection import Selection
from vmkeep.guestfiles.tree import PointTree, normalize
from vmkeep.storage.file_manifest import FilePoint, load_file_point
from vmkeep.storage.repository import Repository
from vmkeep.storage.stream_out import STDOUT, StreamWriter

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(kw_only=True)
class FileRestoreSummary(RestoreSummary):
    """A restore out of a file point (extended attributes set)."""

    point: str
    target: str
    xattrs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "target": self.target,
            **self.counts_json(),
            "xattrs": self.xattrs,
            **self.outcome_json(),
        }


class _Selection(Selection):
    """A selection of a file point's tree, with the tree's batch writer."""

    tree: PointTree

    def __init__(self, tree: PointTree, paths: list[str], warnings: list[RestoreWarning]) -> None:
        super().__init__(tree, paths, warnings)
        self.tree = tree

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
    ownership: Ownership = Ownership(),
) -> FileRestoreSummary:
    """Restore ``paths`` (``/`` = everything) of ``point`` into ``target_dir`` (must exist)."""
    fp = point if isinstance(point, FilePoint) else load_file_point(repo, point)
    tree = PointTree(repo, fp)
    target = os.fspath(target_dir)
    norm = [normalize(p) for p in (paths or ["/"])]
    for p in norm:
        tree.row(p)  # FsNotFoundError before writing anything
    summary = FileRestoreSummary(point=fp.id, target=target)
    chosen = None if "/" in norm else _Selection(tree, norm, summary.skipped)
    opts: dict[str, Any] = {
        "overwrite": overwrite,
        "ownership": ownership,
        "progress": progress,
    }
    result = restore(tree if chosen is None else chosen, target, "/", **opts)
    summary.add(result)
    if any(fe.xattrs for fe in fp.entries):
        for p in ["/"] if chosen is None else chosen.top.values():
            _apply_xattrs(tree, p, target, summary)
    return summary


def dump_paths(
    repo: Repository,
    point: FilePoint | str,
    paths: list[str],
    out: StreamWriter,
    progress: Callable[[int], None] | None = None,
) -> FileRestoreSummary:
    """``paths`` (``/`` = everything) of ``point`` onto the stream ``out`` (``restore files …
    --to -``, :mod:`vmkeep.disks.dump`): one regular file as its bytes, else a tar archive of
    what :func:`restore_paths` would create, hard links and extended attributes included."""
    fp = point if isinstance(point, FilePoint) else load_file_point(repo, point)
    tree = PointTree(repo, fp)
    norm = [normalize(p) for p in (paths or ["/"])]
    for p in norm:
        tree.row(p)  # FsNotFoundError before writing anything
    summary = FileRestoreSummary(point=fp.id, target=STDOUT)
    if len(norm) == 1 and norm[0] != "/":
        entry = tree.stat(norm[0], follow=True)
        if entry.type == "file":
            summary.add(dump_file(tree, norm[0], entry, out, progress))
            return summary
    with TarDump(out, progress) as archive:
        archive.add_tree(tree if "/" in norm else _Selection(tree, norm, summary.skipped))
    summary.add(archive.summary)
    return summary
