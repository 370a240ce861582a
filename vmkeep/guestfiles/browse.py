"""``ls`` of a file restore point: the entries of a directory (or the one entry of a file).

:func:`list_dir` reads only the manifest, never file data.  Paths are given as ``/a/b`` inside the
point (``..`` refused, not resolved); results are sorted by name.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vmkeep.guestfiles.tree import PointTree, normalize
from vmkeep.storage.file_manifest import FileEntry, FilePoint, load_file_point
from vmkeep.storage.repository import Repository


@dataclass(frozen=True)
class ListEntry:
    """One line of ``vmkeep ls``."""

    name: str
    path: str
    type: str  # file | dir | symlink | fifo | chr | blk | sock
    size: int
    mtime_ns: int
    mode: int | None
    link: str | None = None
    uid: int | None = None
    gid: int | None = None
    owner: str | None = None
    group: str | None = None

    @property
    def mtime(self) -> datetime:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, UTC)

    @property
    def mode_text(self) -> str:
        """``ls -l`` style, e.g. ``-rw-r--r--`` (``?`` bits when the source had no modes)."""
        if self.mode is None:
            return {"dir": "d", "symlink": "l"}.get(self.type, "-") + "?????????"
        ifmt = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
                "fifo": stat.S_IFIFO, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK,
                "sock": stat.S_IFSOCK}[self.type]
        return stat.filemode(ifmt | self.mode)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "type": self.type,
            "size": self.size,
            "mtime": self.mtime.isoformat(),
            "mode": self.mode,
            "mode_text": self.mode_text,
            "link": self.link,
            "uid": self.uid,
            "gid": self.gid,
            "owner": self.owner,
            "group": self.group,
        }


def list_entry(fe: FileEntry) -> ListEntry:
    path = os.fsdecode(fe.path)
    return ListEntry(
        name=path.rsplit("/", 1)[-1] or "/",
        path=path,
        type=fe.type,
        size=fe.size,
        mtime_ns=fe.mtime_ns,
        mode=fe.mode,
        link=os.fsdecode(fe.link) if fe.link is not None else None,
        uid=fe.uid,
        gid=fe.gid,
        owner=fe.owner,
        group=fe.group,
    )


def list_dir(repo: Repository, point: FilePoint | str, path: str = "/") -> list[ListEntry]:
    """Entries of directory ``path`` in ``point`` (a :class:`FilePoint` or a reference such as
    an id prefix or ``NAME@latest``); a file path gives that one entry.  Raises
    ``FsNotFoundError`` (exit code 14) for a path the point does not hold."""
    fp = point if isinstance(point, FilePoint) else load_file_point(repo, point)
    tree = PointTree(repo, fp)
    norm = normalize(path)
    row = tree.row(norm)
    if fp.entries[row].type != "dir":
        return [list_entry(fp.entries[row])]
    rows = tree.children.get(norm, [])
    return sorted((list_entry(fp.entries[r]) for r in rows), key=lambda e: e.name)
