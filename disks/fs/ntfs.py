"""NTFS through :mod:`dissect.ntfs` (registered as ``ntfs``).

Contract: as :mod:`vmkeep.disks.fs.base`, with NTFS specifics:

- system metafiles (MFT records below 16: ``$MFT``, ``$Bitmap``...) are hidden from listings;
  DOS 8.3 alias names are skipped;
- there are no POSIX owners or modes: uid/gid are 0, mode is ``0o40755`` for directories,
  ``0o100644`` (``0o100444`` when read-only) for files, ``0o120777`` for symlinks and junctions;
- symlinks and junctions (mount points) are ``symlink`` entries whose target is the stored print
  name with ``\\`` turned into ``/`` (absolute ``C:/...`` targets are kept as they are and thus
  point outside the volume);
- ``streams`` lists alternate data stream names; ``open(path, stream=name)`` reads one;
- ``inode`` is the MFT segment number (hard links share it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

from dissect.ntfs import ATTRIBUTE_TYPE_CODE, NTFS

from vmkeep.disks.fs.base import Entry, FileSystem, Node

FIRST_USER_RECORD = 16
FILE_NAME_DOS = 2
READONLY = 0x1


class NtfsFileSystem(FileSystem):
    fstype = "ntfs"

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = NTFS(fh)
            self.root = self.fs.mft.get(5)

    def _root(self) -> Node:
        return self.root

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        seen: set[str] = set()
        for entry in node.iterdir(dereference=False, ignore_dos=True):
            attr = entry.attribute
            if attr is None or attr.flags == FILE_NAME_DOS:
                continue
            name = attr.file_name
            if name in seen or name in (".", ".."):
                continue
            record = entry.dereference()
            if getattr(record, "segment", FIRST_USER_RECORD) < FIRST_USER_RECORD:
                continue
            seen.add(name)
            yield name, record

    def _type(self, node: Node) -> str:
        if node.is_reparse_point() and (node.is_symlink() or node.is_mount_point()):
            return "symlink"
        return "dir" if node.is_dir() else "file"

    def _entry(self, name: str, path: str, node: Node) -> Entry:
        link = None
        kind = self._type(node)
        if kind == "symlink":
            mode = 0o120777
            link = self._readlink(node)
            size = len(link)
        elif kind == "dir":
            mode, size = 0o40755, 0
        else:
            mode = 0o100644
            size = node.size() if node.has_stream("") else 0
        info = node.attributes[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
        mtime_ns = info.last_modification_time_ns if info else 0
        if kind == "file" and info and info.file_attributes & READONLY:
            mode = 0o100444
        streams = tuple(
            sorted(
                a.name
                for a in node.attributes[ATTRIBUTE_TYPE_CODE.DATA]
                if a.name and a.header.lowest_vcn in (None, 0)
            )
        )
        return Entry(
            name=name,
            path=path,
            type=kind,
            size=size,
            mtime_ns=int(mtime_ns),
            mode=mode,
            link=link,
            inode=getattr(node, "segment", None),
            nlink=max(1, len(node.filenames(ignore_dos=True))),
            streams=streams,
        )

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        if not stream and not node.has_stream(""):
            return io.BytesIO(b"")
        return node.open(stream or "")

    def _readlink(self, node: Node) -> str:
        return str(node.reparse_point_name or "").replace("\\", "/")
