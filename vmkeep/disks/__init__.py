"""vmkeep.disks: read backed-up virtual disks, whatever the guest OS.

Layers, each over any seekable binary file-like (never assuming a path):

- :mod:`.vmdk`: every VMDK structure (descriptors, sparse and streamOptimized extents,
  snapshot delta chains), read and written in one package;
- :func:`open_disk` (:mod:`.vmdk.opener`): raw images and VMDKs (flat, sparse, streamOptimized,
  twoGbMaxExtent*), with safe descriptor handling -> :class:`DiskImage`;
- :func:`list_volumes` (:mod:`.volumes`): GPT / MBR partitions, LVM2 logical volumes, bare file
  systems -> :class:`Volume` objects with ``open()``; :func:`list_disks_volumes` for a VM's
  disks together (volume groups spanning them);
- :func:`open_filesystem` (:mod:`.fs`): ext2/3/4, XFS, Btrfs, NTFS, FAT, exFAT behind one
  read-only interface (:class:`FileSystem`, :class:`Entry`);
- :func:`restore` (:mod:`.safe_restore`): copy guest files to a local folder without ever
  writing outside it;
- :mod:`.fusefs`: a read-only FUSE view (imported lazily: it loads libfuse).

Errors are in :mod:`.errors` (all :class:`vmkeep.errors.InputError`, exit code 14).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmkeep.disks.errors import (
        DiskError,
        DiskFormatError,
        FileSystemError,
        ParentDiskRefused,
        RestoreError,
        UnsafeDescriptorError,
        VolumeError,
    )
    from vmkeep.disks.fs import Entry, FileSystem, open_filesystem
    from vmkeep.disks.image import DiskImage
    from vmkeep.disks.safe_restore import RestoreSummary, RestoreWarning, restore
    from vmkeep.disks.vmdk.opener import open_disk
    from vmkeep.disks.volumes import Volume, list_disks_volumes, list_volumes

#: Public name -> the submodule defining it.  Imported on first use (PEP 562): a raw-image backup
#: that only needs :mod:`.pread` does not load dissect's volume and file-system parsers.
_LAZY = {
    **dict.fromkeys(
        (
            "DiskError",
            "DiskFormatError",
            "FileSystemError",
            "ParentDiskRefused",
            "RestoreError",
            "UnsafeDescriptorError",
            "VolumeError",
        ),
        "errors",
    ),
    **dict.fromkeys(("Entry", "FileSystem", "open_filesystem"), "fs"),
    "DiskImage": "image",
    **dict.fromkeys(("RestoreSummary", "RestoreWarning", "restore"), "safe_restore"),
    "open_disk": "vmdk.opener",
    **dict.fromkeys(("Volume", "list_disks_volumes", "list_volumes"), "volumes"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DiskError",
    "DiskFormatError",
    "DiskImage",
    "Entry",
    "FileSystem",
    "FileSystemError",
    "ParentDiskRefused",
    "RestoreError",
    "RestoreSummary",
    "RestoreWarning",
    "UnsafeDescriptorError",
    "Volume",
    "VolumeError",
    "list_disks_volumes",
    "list_volumes",
    "open_disk",
    "open_filesystem",
    "restore",
]
