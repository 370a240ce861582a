"""Open a virtual disk (raw image or VMDK) safely: :func:`open_disk`.

Contract:

- ``open_disk(source, format=None, extent_opener=None) -> DiskImage``.  ``source`` is a path or
  any seekable binary file-like (a local file, the repository's random-access reader...).  Paths
  are opened read-only; file-likes given by the caller are never closed by us.
- The format comes from content, never from the file name: ``KDMV`` magic = hosted sparse VMDK
  (monolithicSparse, streamOptimized); a small text file starting ``# Disk DescriptorFile`` = a
  descriptor (monolithicFlat, vmfs/vmfsThin, twoGbMaxExtentFlat/Sparse); anything else = raw.
  ``format="raw"`` forces raw (use it for guest-controlled bytes such as a backed-up disk, so
  that a guest writing a fake header at sector 0 cannot change how its disk is read).
- Descriptor safety: extent file names must be bare names in the descriptor's folder (no
  separators, no ``..``, not absolute, no NUL); they are opened with ``O_NOFOLLOW`` relative to the
  folder's descriptor (``openat``), must be regular files and large enough.  Descriptors naming a
  parent (delta/snapshot disks), raw device mappings and sesparse/vmfsSparse extents are refused
  with :class:`UnsafeDescriptorError` / :class:`ParentDiskRefused` *before* anything is opened.
- Without a path, extents are opened through ``extent_opener(name)`` (same name checks); with
  neither, a descriptor is a :class:`DiskFormatError`.
- Unreadable or corrupt input raises :class:`DiskFormatError`, never a bare parser exception.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from vmkeep.disks.errors import DiskFormatError, ParentDiskRefused, UnsafeDescriptorError
from vmkeep.disks.image import DiskImage, Extent, RawExtent, ZeroExtent, stream_size
from vmkeep.disks.vmdk.descriptor import (
    FLAT_KINDS,
    HEADER_LINE,
    MAX_DESCRIPTOR,
    Descriptor,
    check_extent_name,
    parse_descriptor,
)

# dissect.hypervisor's parsers (and its cstruct definitions, ~0.2 s to import) are loaded only
# when an image turns out to be a sparse VMDK; raw images never pay for them.  The magics are
# VMware's (as in dissect.hypervisor.disk.c_vmdk).
VMDK_MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
SESPARSE_MAGIC = b"\xbe\xba\xfe\xca"
DESCRIPTOR_MAGIC = HEADER_LINE.lower().encode()
ExtentOpener = Callable[[str], BinaryIO]
FORMATS = (None, "raw", "vmdk")


def open_disk(
    source: str | os.PathLike[str] | BinaryIO,
    format: str | None = None,
    extent_opener: ExtentOpener | None = None,
) -> DiskImage:
    """Open ``source`` as a disk image (see the module docstring)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        fh: BinaryIO = _open_image_file(path)
        try:
            return _open(fh, str(path), format, path.parent, extent_opener, owned=True)
        except BaseException:
            fh.close()
            raise
    name = str(getattr(source, "name", "") or "<stream>")
    return _open(source, name, format, None, extent_opener, owned=False)


#: what a path may be besides a regular file or a block device, as an error names it
_NOT_IMAGES = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def _open_image_file(path: Path) -> BinaryIO:
    """``path`` opened read-only, refused unless a regular file or a block device: opening a
    FIFO would wait for a writer forever, and a character device (``/dev/zero``) has no size
    (opened non-blocking, checked, then made blocking again)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskFormatError(str(path), exc.strerror or repr(exc)) from exc
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind not in (stat.S_IFREG, stat.S_IFBLK):
            what = _NOT_IMAGES.get(kind, "not a regular file")
            raise DiskFormatError(str(path), f"{what}, not a disk image or block device")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")  # owned by the DiskImage from here
    except BaseException:
        os.close(fd)
        raise


def _open(
    fh: BinaryIO,
    name: str,
    fmt: str | None,
    folder: Path | None,
    opener: ExtentOpener | None,
    *,
    owned: bool,
) -> DiskImage:
    try:
        size = stream_size(fh)
        fh.seek(0)
        head = fh.read(min(size, MAX_DESCRIPTOR)) if fmt != "raw" else b""
    except OSError as exc:
        raise DiskFormatError(name, exc.strerror or repr(exc)) from exc
    if fmt == "raw":
        return DiskImage(name, [RawExtent(fh, 0, size, owned=owned)], "raw")
    if head[:4] == VMDK_MAGIC:
        from vmkeep.disks.vmdk.sparse import SparseExtent

        ext = SparseExtent(fh, name, owned=owned)
        kind = ext.create_type or "monolithicSparse"
        return DiskImage(name, [ext], f"vmdk:{kind}")
    if head[:4] in (COWD_MAGIC, SESPARSE_MAGIC):
        raise ParentDiskRefused(name, "a COWD/seSparse delta extent")
    if size <= MAX_DESCRIPTOR and head[: len(DESCRIPTOR_MAGIC)].lower() == DESCRIPTOR_MAGIC:
        descriptor = parse_descriptor(head, name).check_base(name)
        image = _open_descriptor(name, descriptor, folder, opener)
        if owned:
            fh.close()
        return image
    if fmt == "vmdk":
        raise DiskFormatError(name, "neither a sparse VMDK nor a VMDK descriptor")
    return DiskImage(name, [RawExtent(fh, 0, size, owned=owned)], "raw")


def _open_descriptor(
    name: str, descriptor: Descriptor, folder: Path | None, opener: ExtentOpener | None
) -> DiskImage:
    if folder is None and opener is None:
        raise DiskFormatError(name, "a VMDK descriptor needs its folder or an extent opener")
    dir_fd = _open_dir(name, folder) if opener is None and folder is not None else None
    extents: list[Extent] = []
    try:
        for ext in descriptor.extents:
            size = ext.size
            if ext.kind == "ZERO":
                extents.append(ZeroExtent(size))
                continue
            fname = check_extent_name(name, ext.file)
            efh = opener(fname) if opener is not None else _open_at(name, dir_fd, fname)
            owned = opener is None
            if ext.kind in FLAT_KINDS:
                start = ext.offset
                try:
                    have = stream_size(efh)
                except OSError as exc:
                    raise DiskFormatError(fname, repr(exc)) from exc
                if have < start + size:
                    if owned:
                        efh.close()
                    msg = f"flat extent is {have} bytes, needs {start + size}"
                    raise DiskFormatError(fname, msg)
                extents.append(RawExtent(efh, start, size, owned=owned))
            else:  # SPARSE
                from vmkeep.disks.vmdk.sparse import SparseExtent

                try:
                    sparse = SparseExtent(efh, fname, owned=owned)
                except BaseException:
                    if owned:
                        efh.close()
                    raise
                if sparse.size < size:
                    raise DiskFormatError(fname, "sparse extent smaller than its descriptor says")
                sparse.size = size
                extents.append(sparse)
    except BaseException:
        for done in extents:
            done.close()
        raise
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    kind = descriptor.create_type or "unknown"
    return DiskImage(name, extents, f"vmdk:{kind}")


def _open_dir(name: str, folder: Path) -> int:
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskFormatError(name, f"cannot open its folder: {exc.strerror}") from exc


def _open_at(name: str, dir_fd: int | None, fname: str) -> BinaryIO:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(fname, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise DiskFormatError(name, f"cannot open extent {fname!r}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeDescriptorError(name, f"extent {fname!r} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
