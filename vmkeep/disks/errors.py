"""Typed errors of :mod:`vmkeep.disks`.

Almost every error here is bad *input* (a disk image, a descriptor, a guest file system or a mount
folder that cannot or must not be used), so those subclass :class:`vmkeep.errors.InputError` (exit
code 14).  The exception is :class:`FuseMountError` (exit code 19): FUSE itself could not mount
or stopped serving, which no change of input fixes.  As everywhere in vmkeep, the first docstring
line of a class is its message template (``str.format`` with the constructor's positional
arguments).
"""

from __future__ import annotations

from vmkeep.errors import InputError, VmkeepError


class DiskError(InputError):
    """Disk error: {}"""


class DiskFormatError(DiskError):
    """Cannot read disk image {}: {}"""


class UnsafeDescriptorError(DiskFormatError):
    """Refusing VMDK descriptor {}: {}"""


class ParentDiskRefused(UnsafeDescriptorError):
    """Refusing VMDK {}: it names a parent disk ({}); delta disks are not opened"""


class UnsupportedDiskFormat(DiskFormatError):
    """Disk {} cannot be read: {}"""


class VolumeError(DiskError):
    """Cannot read volumes of {}: {}"""


class FileSystemError(DiskError):
    """File system error on {}: {}"""


class UnknownFileSystemError(FileSystemError):
    """No supported file system on {}{}"""


class FsDamagedError(FileSystemError):
    """Damaged file system on {}: {}"""


class FsNotFoundError(FileSystemError):
    """No such file or directory in {}: {}"""


class FsNotADirectoryError(FileSystemError):
    """Not a directory in {}: {}"""


class FsNotASymlinkError(FileSystemError):
    """Not a symbolic link in {}: {}"""


class FsLoopError(FileSystemError):
    """Too many levels of symbolic links in {}: {}"""


class FsContentElsewhereError(FileSystemError):
    """Cannot read a file of {}: {}"""


def read_in_guest(where: str) -> str:
    """What a user does instead of reading a file :class:`FsContentElsewhereError` names: read it
    in ``where`` (``"Windows"``, ``"the guest"``), which has what it takes."""
    return f"read it in {where}: restore the disk, or instant-restore the VM"


class RestoreError(DiskError):
    """Restore error: {}"""


class MountPointError(DiskError):
    """Cannot mount on {}: {}"""


class FuseMountError(VmkeepError):
    """FUSE mount on {} failed: {}"""

    exit_code = 19
