"""Guest file systems behind one interface: :func:`open_filesystem` picks the driver by magic.

Contract: ``open_filesystem(fh, name="volume", fstype=None) -> FileSystem`` over a volume
file-like (see :mod:`vmkeep.disks.fs.base` for the interface).  ``fstype`` skips detection.
Drivers are registered in :data:`DRIVERS` by the name :mod:`vmkeep.disks.magic` reports (``ext``,
``xfs``, ``btrfs``, ``ntfs``, ``fat``, ``exfat``), one small module each, imported only when a
volume of that kind is opened (the dissect parsers cost ~0.4 s to import all at once).  A volume
without a supported file system raises :class:`UnknownFileSystemError`; a corrupt one
:class:`FileSystemError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import BinaryIO

from vmkeep.disks.errors import FileSystemError, UnknownFileSystemError
from vmkeep.disks.fs.base import Entry, FileSystem
from vmkeep.disks.magic import identify

Driver = Callable[[BinaryIO, str], FileSystem]

#: file-system name → (module, class), imported on first use
DRIVERS: dict[str, tuple[str, str]] = {
    "ext": ("vmkeep.disks.fs.ext", "ExtFileSystem"),
    "xfs": ("vmkeep.disks.fs.xfs", "XfsFileSystem"),
    "btrfs": ("vmkeep.disks.fs.btrfs", "BtrfsFileSystem"),
    "ntfs": ("vmkeep.disks.fs.ntfs", "NtfsFileSystem"),
    "fat": ("vmkeep.disks.fs.fat", "FatFileSystem"),
    "exfat": ("vmkeep.disks.fs.exfat", "ExFatFileSystem"),
}


def driver_for(fstype: str) -> Driver | None:
    """The driver class for ``fstype`` (imported now), or None when unsupported."""
    spec = DRIVERS.get(fstype)
    if spec is None:
        return None
    driver: Driver = getattr(importlib.import_module(spec[0]), spec[1])
    return driver


def open_filesystem(fh: BinaryIO, name: str = "volume", fstype: str | None = None) -> FileSystem:
    """Open the file system on ``fh`` (see the module docstring)."""
    if fstype is None:
        try:
            fstype = identify(fh)
        except OSError as exc:
            raise FileSystemError(name, exc.strerror or repr(exc)) from exc
    driver = driver_for(fstype or "")
    if driver is None:
        raise UnknownFileSystemError(name, f" (found {fstype})" if fstype else "")
    fs = driver(fh, name)
    fs.listdir("/")  # fail now, typed, rather than on first use
    return fs


__all__ = ["DRIVERS", "Entry", "FileSystem", "driver_for", "open_filesystem"]
