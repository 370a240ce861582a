"""FAT12/16/32 through :mod:`dissect.fat` (registered as ``fat``; exFAT: :mod:`.exfat`).

Contract: as :mod:`vmkeep.disks.fs.base`, with FAT specifics: no owners, links or devices; mode is
``0o40755`` for directories and ``0o100644`` (``0o100444`` read-only) for files; timestamps are
stored in the writer's local time and reported as if UTC.  Name lookups are exact (case
sensitive) on the long name.  Long names are read as stored, an unpaired UTF-16 surrogate kept
(:mod:`vmkeep.disks.fs.utf16_names`): one such name no longer makes its folder unreadable.

A FAT subdirectory whose entries do not begin with its ``.`` entry (overwritten by other data:
dissect would list the bytes as entries with garbage names) raises
:class:`~vmkeep.disks.errors.FsDamagedError`, as for ext and XFS (:mod:`.posix`).  So do a
cluster chain that returns to a cluster it passed (a loop: dissect follows it until memory runs
out) or leaves the volume, and a file whose chain ends before its size (dissect reads zeros
for the rest) — a damaged FAT, as ``fsck.fat`` would report it.
"""

from __future__ import annotations

import calendar
import datetime
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from dissect.fat import FATFS
from dissect.fat.c_fat import c_fat
from dissect.fat.exceptions import BadClusterError, FreeClusterError

from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs import utf16_names
from vmkeep.disks.fs.base import Entry, FileSystem, Node

utf16_names.install(c_fat)  # long names with an unpaired UTF-16 surrogate, as Windows keeps them


def _ns(dt: datetime.datetime | None) -> int:
    if dt is None:
        return 0
    return calendar.timegm(dt.timetuple()) * 10**9 + dt.microsecond * 1000


_DOT_NAME = b".          "  # the 11-byte short name of a subdirectory's first entry
_ATTR_DIRECTORY = 0x10


def _begins_with_dot(node: Node) -> bool:
    """Whether the subdirectory ``node``'s first raw 32-byte entry is its ``.`` entry.

    Read from the raw cluster, not through dissect's parser: random bytes in a directory's
    place can look like a broken long-name run, on which the parser fails with a ``TypeError``
    before any entry comes out.
    """
    raw = node.open().read(32)
    return len(raw) == 32 and raw[:11] == _DOT_NAME and bool(raw[11] & _ATTR_DIRECTORY)


class FatFileSystem(FileSystem):
    fstype = "fat"
    case_insensitive = True

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = FATFS(fh)
            clusters = self.fs.data_stream.size // self.fs.cluster_size
            self.fs.fat.chain = _checked_chain(self.fs.fat, name, clusters)

    def _root(self) -> Node:
        return self.fs.root

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        if node is not self.fs.root and not _begins_with_dot(node):
            raise FsDamagedError(
                self.name, f"directory at cluster {node.cluster} does not begin with its '.' entry"
            )
        for child in node.iterdir():
            if child.name in (".", "..") or child.is_volume_id():
                continue
            yield _display_name(child), child

    def _type(self, node: Node) -> str:
        return "dir" if node.is_directory() else "file"

    def _entry(self, name: str, path: str, node: Node) -> Entry:
        is_dir = node.is_directory()
        mode = 0o40755 if is_dir else (0o100444 if node.is_readonly() else 0o100644)
        try:
            mtime = _ns(node.mtime)
        except (ValueError, OverflowError):
            mtime = 0
        return Entry(
            name=name,
            path=path,
            type="dir" if is_dir else "file",
            size=0 if is_dir else node.size,
            mtime_ns=mtime,
            mode=mode,
            inode=None,
        )

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        clusters = sum(count for _start, count in node.dataruns())
        if clusters * self.fs.cluster_size < node.size:
            path = "/" + str(node.path).replace("\\", "/")
            raise FsDamagedError(self.name, f"{path}: its cluster chain ends after {clusters} "
                                            f"clusters, short of its {node.size} bytes")
        return node.open()

    def _readlink(self, node: Node) -> str:
        raise ValueError("FAT has no symbolic links")


def _checked_chain(fat: Any, volume: str, clusters: int) -> Callable[[int], Iterator[int]]:
    """dissect's ``FAT.chain`` for ``fat``, stopping with :class:`FsDamagedError` at a cluster
    it already passed or one outside the volume's ``clusters`` data clusters."""
    follow = type(fat).chain

    def chain(first: int) -> Iterator[int]:
        seen: set[int] = set()
        for cluster in _typed(follow(fat, first), volume, first):
            if cluster in seen:
                raise FsDamagedError(volume, f"the cluster chain from cluster {first} returns "
                                             f"to cluster {cluster}: a loop")
            if not 2 <= cluster < clusters + 2:
                raise FsDamagedError(volume, f"the cluster chain from cluster {first} leaves "
                                             f"the volume at cluster {cluster}")
            seen.add(cluster)
            yield cluster

    return chain


def _typed(chain: Iterator[int], volume: str, first: int) -> Iterator[int]:
    """``chain`` with dissect's errors for a damaged FAT turned into :class:`FsDamagedError`."""
    try:
        yield from chain
    except FreeClusterError as exc:
        raise FsDamagedError(volume, f"the cluster chain from cluster {first} runs into "
                                     f"cluster {exc.args[0]}, which the FAT calls free") from None
    except BadClusterError as exc:
        raise FsDamagedError(volume, f"the cluster chain from cluster {first} runs into "
                                     f"cluster {exc.args[0]}, marked bad") from None
    except ValueError as exc:
        raise FsDamagedError(volume, f"the cluster chain from cluster {first}: {exc}") from None


def _display_name(entry: Any) -> str:
    """Long name, else the 8.3 name with Windows NT lower-case flags (0x08 base, 0x10 ext)."""
    if entry.ldirents:
        return str(entry.name)
    flags = int(getattr(entry.dirent, "DIR_NTRes", 0) or 0)
    base, dot, ext = str(entry.short_name).partition(".")
    if flags & 0x08:
        base = base.lower()
    if flags & 0x10:
        ext = ext.lower()
    return base + dot + ext
