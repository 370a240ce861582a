"""UTF-16 names as Windows keeps them: code units, an unpaired surrogate among them.

NTFS stores a name as up to 255 UTF-16 code units and FAT's long names (VFAT) as UTF-16 too;
neither checks that the units pair up: a program calling ``NtCreateFile`` (or a buggy sync
tool, or a name cut in the middle of a pair) leaves a lone surrogate in it, and Windows lists,
opens and backs up that file like any other.  :mod:`dissect.cstruct` decodes ``WCHAR`` strings
strictly, so one such name made its *whole directory* unreadable — ``ls``, ``restore files``,
``find`` and ``mount`` failed on all of it with a ``UnicodeDecodeError``.  :func:`install` makes
one file system's :mod:`dissect.cstruct` types (``c_ntfs``, ``c_fat``) decode with
``surrogatepass``: a lone surrogate is kept as the code point it is (``\\ud800``), every other
name is unchanged.

Contract: names read exactly as stored; such a name is shown escaped (``\\ud800``) by ``ls``,
kept in catalogs (``\\uXXXX``), and refused — reported as ``unsafe-name``, the rest of its folder
restored — wherever a target cannot spell it (a Linux folder, SFTP, a guest, SMB:
:func:`vmkeep.disks.restore_model.unsafe_name`).
"""

from __future__ import annotations

from typing import Any, BinaryIO

from dissect.cstruct import cstruct
from dissect.cstruct.types.base import EOF


def _read_array(cls: Any, stream: BinaryIO, count: int, context: Any = None) -> Any:
    """:meth:`dissect.cstruct.types.wchar.Wchar._read_array`, keeping unpaired surrogates."""
    if count == 0:
        return type.__call__(cls, "")
    if count != EOF:
        count *= 2
    data = stream.read(-1 if count == EOF else count)
    if count != EOF and len(data) != count:
        raise EOFError(f"Read {len(data)} bytes, but expected {count}")
    return type.__call__(cls, data.decode("utf-16-le", "surrogatepass"))


def _read_0(cls: Any, stream: BinaryIO, context: Any = None) -> Any:
    """:meth:`dissect.cstruct.types.wchar.Wchar._read_0` (NUL-terminated), the same way."""
    units = []
    while (unit := stream.read(2)) != b"\x00\x00":
        if len(unit) != 2:
            raise EOFError(f"Read {len(unit)} bytes, but expected 2")
        units.append(unit)
    return type.__call__(cls, b"".join(units).decode("utf-16-le", "surrogatepass"))


def _attribute_name(self: Any) -> str:
    """:attr:`dissect.ntfs.attr.AttributeHeader.name` (an alternate stream's name), the same."""
    self.fh.seek(self.offset + self.header.NameOffset)
    return str(self.fh.read(self.header.NameLength * 2).decode("utf-16-le", "surrogatepass"))


def install_ntfs_attribute_names() -> None:
    """Make dissect.ntfs read attribute (alternate stream) names the same way: one stream
    named with a lone surrogate failed its file's every read — and, in the root folder, the
    whole volume (idempotent)."""
    from dissect.ntfs.attr import AttributeHeader

    AttributeHeader.name = property(_attribute_name)


def install(cs: cstruct) -> None:
    """Make ``cs``'s ``wchar`` strings keep unpaired surrogates (idempotent; other
    :mod:`dissect.cstruct` instances are not touched).  Little-endian, as NTFS and FAT are."""
    cs.wchar._read_array = classmethod(_read_array)
    cs.wchar._read_0 = classmethod(_read_0)
