"""Guest file systems behind one interface: :func:`open_filesystem` picks the driver by magic.

Contract: ``open_filesystem(fh, name="volume", fstype=None) -> FileSystem`` over a volume
file-like (see :mod:`vmkeep.disks.fs.base` for the interface).  ``fstype`` skips detection.
Drivers are registered in :data:`DRIVERS` by the name :mod:`vmkeep.disks.magic` reports (``ext``,
``xfs``, ``btrfs``, ``ntfs``, ``fat``, ``exfat``), one small module each.  A volume without a
supported file system raises :class:`UnknownFileSystemError`; a corrupt one
:class:`FileSystemError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from vmkeep.disks.errors import FileSystemError, UnknownFileSystemError
from vmkeep.disks.fs.base import Entry, FileSystem
from vmkeep.disks.fs.btrfs import BtrfsFileSystem
from vmkeep.disks.fs.ext import ExtFileSystem
from vmkeep.disks.fs.fat import ExFatFileSystem, FatFileSystem
from vmkeep.disks.fs.ntfs import NtfsFileSystem
from vmkeep.disks.fs.xfs import XfsFileSystem
from vmkeep.disks.magic import identify

Driver = Callable[[BinaryIO, str], FileSystem]

DRIVERS: dict[str, Driver] = {
    "ext": ExtFileSystem,
    "xfs": XfsFileSystem,
    "btrfs": BtrfsFileSystem,
    "ntfs": NtfsFileSystem,
    "fat": FatFileSystem,
    "exfat": ExFatFileSystem,
}


def open_filesystem(fh: BinaryIO, name: str = "volume", fstype: str | None = None) -> FileSystem:
    """Open the file system on ``fh`` (see the module docstring)."""
    if fstype is None:
        try:
            fstype = identify(fh)
        except OSError as exc:
            raise FileSystemError(name, exc.strerror or repr(exc)) from exc
    driver = DRIVERS.get(fstype or "")
    if driver is None:
        raise UnknownFileSystemError(name, f" (found {fstype})" if fstype else "")
    fs = driver(fh, name)
    fs.listdir("/")  # fail now, typed, rather than on first use
    return fs


__all__ = ["DRIVERS", "Entry", "FileSystem", "open_filesystem"]
