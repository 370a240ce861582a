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
- ``inode`` is the MFT segment number (hard links share it);
- names — of files and of alternate streams — are read as stored, an unpaired UTF-16 surrogate
  kept as that code point (:mod:`vmkeep.disks.fs.utf16_names`): one such name no longer makes
  its folder (or, in the root, the volume) unreadable;
- POSIX symlinks and device nodes that ntfs-3g stores as Interix files (SYSTEM files starting
  ``IntxLNK\x01`` / ``IntxCHR`` / ``IntxBLK``) are shown as ``symlink`` / ``other`` entries;
- a file NTFS compressed itself (LZNT1: its folder marked compressed) reads decompressed, unit
  by unit by NTFS's rule and decoded by libfwnt (:mod:`vmkeep.disks.fs.ntfs_compression`); a
  compression unit that does not decode is an error naming the file, never a short read;
- a file Windows compressed with WOF's XPRESS algorithms (CompactOS, ``compact /exe``; the
  content in its ``WofCompressedData`` stream, which is then not listed) reads decompressed
  (:mod:`vmkeep.disks.fs.wof`), and so does one compressed with LZX (``compact /exe:lzx``)
  where wimlib is installed (:mod:`vmkeep.disks.fs.wimlib`; where it is not, such a file is one of
  the next kind, and the error says what to install);
- a file whose reparse point says its content is kept outside its data stream — Windows Data
  Deduplication (its chunk store), WOF compression in a form not decoded (WIMBoot; LZX without
  wimlib),
  hierarchical storage managers, Single Instance Storage, and a cloud placeholder (OneDrive Files
  On-Demand and its kin) with any range not downloaded — is listed as a file, and opening it
  raises :class:`~vmkeep.disks.errors.FsContentElsewhereError` saying where the content is:
  its data stream holds zeros (sparse) where the content belongs, and reading that would
  restore a file of zeros in silence.  The same for a file encrypted with EFS (its stream is
  ciphertext, written elsewhere it would be a file of noise);
- bytes of a stream past its *valid data length* (``ValidDataLength``: a file extended with
  ``SetEndOfFile`` and not written there yet) read as zeros, as Windows reads them — its
  clusters still hold whatever was there before, which dissect would read.

A directory's entries are those of its ``$I30`` index root and of every index buffer its index
bitmap marks in use (:func:`directory_entries`).  dissect reads every buffer instead and skips
one that is not an index buffer in silence — an overwritten directory listed part of its files
and a restore reported the rest as never there — and lists the stale entries of buffers no
longer in use.  A buffer in use that is not an index buffer raises
:class:`~vmkeep.disks.errors.FsDamagedError`, as a damaged ext, XFS or FAT directory does.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

from dissect.ntfs import ATTRIBUTE_TYPE_CODE, NTFS
from dissect.ntfs.c_ntfs import c_ntfs
from dissect.ntfs.exceptions import Error as NtfsError
from dissect.ntfs.index import IndexBuffer, IndexEntry

from vmkeep.disks.errors import FsContentElsewhereError, FsDamagedError, read_in_guest
from vmkeep.disks.fs import ntfs_compression, utf16_names, wimlib, wof
from vmkeep.disks.fs.base import Entry, FileSystem, Node
from vmkeep.disks.fs.wof import open_wof, wof_algorithm
from vmkeep.disks.overlay import zero_tail

ntfs_compression.install()  # files NTFS compressed itself: read by NTFS's rule, decoded in C
utf16_names.install(c_ntfs)  # names with an unpaired UTF-16 surrogate, as Windows keeps them
utf16_names.install_ntfs_attribute_names()  # and alternate streams named so

FIRST_USER_RECORD = 16
FILE_NAME_DOS = 2
READONLY = 0x1
SYSTEM = 0x4
ENCRYPTED = 0x4000
INTERIX_LINK = b"IntxLNK\x01"
MAX_INTERIX = 8 + 2 * 4096
#: WOF's reparse tag, and the stream its file provider keeps a compressed file's content in
WOF_TAG, WOF_STREAM = 0x80000017, "WofCompressedData"
#: reparse tags of files whose content is not in their own data stream, and where it is
CONTENT_ELSEWHERE = {
    0x80000013: "its content is kept in the volume's Data Deduplication chunk store",
    WOF_TAG: "it is compressed by Windows (WOF) in a form vmkeep does not decode (WIMBoot: "
             "its content is in a WIM file)",
    0xC0000004: "its content was moved off the volume by a storage manager (HSM)",
    0x80000006: "its content was moved off the volume by a storage manager (HSM)",
    0x80000007: "its content is kept in the volume's Single Instance Storage store",
}
#: a file WOF compressed with LZX where wimlib is not installed
LZX_WITHOUT_WIMLIB = (f"it is compressed by Windows (WOF: LZX, as compact /exe:lzx does), which "
                      f"vmkeep decodes with wimlib: install {wimlib.PACKAGE} on this machine")
#: cloud placeholders (IO_REPARSE_TAG_CLOUD and CLOUD_1..F): content present only once downloaded
CLOUD_TAG_MASK, CLOUD_TAG = 0xFFFF0FFF, 0x9000001A
NOT_DOWNLOADED = ("it is a cloud placeholder (OneDrive Files On-Demand or the like) not all "
                  "downloaded")
ENCRYPTED_WITH_EFS = ("it is encrypted with EFS: its data is ciphertext that only Windows, with "
                      "its owner's key, decrypts")
#: what to do instead, for the error
READ_IN_WINDOWS = read_in_guest("Windows")


def directory_entries(volume: str, record: Node) -> Iterator[IndexEntry]:
    """The ``$I30`` index entries of directory ``record``: its index root's, then those of each
    index buffer in use (module docstring); :class:`FsDamagedError` for a buffer in use that is
    not one."""
    if not record.is_dir():
        raise NotADirectoryError(f"MFT record {record.segment} is not a directory")
    index = record.index("$I30")
    for entry in index.root.entries():
        if entry.is_end:
            break
        yield entry
    try:
        stream = record.open("$I30", ATTRIBUTE_TYPE_CODE.INDEX_ALLOCATION)
    except FileNotFoundError:
        return  # a small directory: the root holds every entry
    try:
        in_use = record.open("$I30", ATTRIBUTE_TYPE_CODE.BITMAP).read()
    except FileNotFoundError:
        raise FsDamagedError(
            volume, f"directory record {record.segment} has index buffers but no index bitmap"
        ) from None
    size = index.root.bytes_per_index_buffer
    for number in range(stream.size // size):
        if number // 8 >= len(in_use) or not in_use[number // 8] >> (number % 8) & 1:
            continue
        try:
            entries = list(IndexBuffer(index, stream, number * size, size).entries())
        except (NtfsError, ValueError, EOFError) as exc:
            raise FsDamagedError(
                volume, f"directory record {record.segment}: index buffer {number} is in use but "
                f"is not an index buffer ({exc or type(exc).__name__})"
            ) from exc
        for entry in entries:
            if entry.is_end:
                break
            yield entry


class NtfsFileSystem(FileSystem):
    fstype = "ntfs"
    case_insensitive = True

    def __init__(self, fh: BinaryIO, name: str) -> None:
        super().__init__(name)
        with self.guard("/"):
            self.fs = NTFS(fh)
            self.root = self.fs.mft.get(5)

    def _root(self) -> Node:
        return self.root

    def _iterdir(self, node: Node) -> Iterator[tuple[str, Node]]:
        seen: set[str] = set()
        for entry in directory_entries(self.name, node):
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
        if node.is_dir():
            return "dir"
        magic = self._interix_magic(node)
        if magic == INTERIX_LINK:
            return "symlink"
        return "other" if magic else "file"

    def _interix_magic(self, node: Node) -> bytes:
        """ntfs-3g stores POSIX symlinks/devices as small SYSTEM files with an ``Intx`` magic."""
        info = node.attributes[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
        if not info or not info.file_attributes & SYSTEM or not node.has_stream(""):
            return b""
        if not 8 <= node.size() <= MAX_INTERIX:
            return b""
        head = bytes(node.open().read(8))
        return head if head.startswith(b"Intx") else b""

    def _entry(self, name: str, path: str, node: Node) -> Entry:
        link = None
        kind = self._type(node)
        if kind == "other":
            chr_dev = self._interix_magic(node).startswith(b"IntxCHR")
            mode, size = (0o20644 if chr_dev else 0o60644), 0
        elif kind == "symlink":
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
        hidden = WOF_STREAM if _wof(node) is not None else None  # the file's own content
        streams = tuple(
            sorted(
                a.name
                for a in node.attributes[ATTRIBUTE_TYPE_CODE.DATA]
                if a.name and a.header.lowest_vcn in (None, 0) and a.name != hidden
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
            kind=("chr" if mode & 0o170000 == 0o20000 else "blk") if kind == "other" else "",
            streams=streams,
            elsewhere=_elsewhere(node) if kind == "file" else "",
        )

    def _open(self, node: Node, stream: str | None) -> BinaryIO:
        if not stream and not node.has_stream(""):
            return io.BytesIO(b"")
        if not stream:
            why = _elsewhere(node)
            if why:
                raise FsContentElsewhereError(self.name,
                                              f"{_path_of(node)}: {why} ({READ_IN_WINDOWS})")
        algorithm = None if stream else _wof(node)
        if algorithm is not None:
            return open_wof(node.open(WOF_STREAM), node.size(WOF_STREAM), node.size(), algorithm,
                            (self.name, _path_of(node)))
        data = node.open(stream or "")
        valid = _valid_data_length(node, stream or "")
        size = node.size(stream or "")
        return data if valid is None or valid >= size else zero_tail(data, valid, size)

    def _readlink(self, node: Node) -> str:
        if not node.is_reparse_point():  # an Interix symlink written by ntfs-3g
            data = bytes(node.open().read(MAX_INTERIX))
            return data[8:].decode("utf-16-le", "surrogatepass").rstrip("\0")
        return _print_name(node).replace("\\", "/")


def _print_name(node: Node) -> str:
    """The print name of a symlink or junction reparse point, decoded as file names are
    (``surrogatepass``: NTFS names may hold an unpaired surrogate, and a link to such a file
    carries it); ``""`` when its offsets leave the buffer (damage).  dissect.ntfs decodes it
    strictly, and one such link made its whole folder unreadable."""
    point = node.attributes[ATTRIBUTE_TYPE_CODE.REPARSE_POINT][0]
    header = point.tag_header
    if not header:
        return ""
    start, length = int(header.PrintNameOffset), int(header.PrintNameLength)
    raw = bytes(point.buffer)[start:start + length]
    if len(raw) != length or length % 2:
        return ""
    return raw.decode("utf-16-le", "surrogatepass")


def _wof_compressed(node: Node) -> int | None:
    """The algorithm of a file WOF's file provider compressed (its ``WofCompressedData`` stream
    present), whether or not :mod:`.wof` decodes it here; else ``None``."""
    if not node.is_reparse_point():
        return None
    point = node.attributes[ATTRIBUTE_TYPE_CODE.REPARSE_POINT][0]
    if int(point.tag) != WOF_TAG or not node.has_stream(WOF_STREAM):
        return None
    return wof_algorithm(bytes(point.buffer))


def _wof(node: Node) -> int | None:
    """The algorithm of a file WOF compressed in a form :mod:`.wof` decodes here, else
    ``None``."""
    algorithm = _wof_compressed(node)
    return algorithm if algorithm is not None and wof.readable(algorithm) else None


def _elsewhere(node: Node) -> str:
    """Why file ``node``'s unnamed stream cannot be read from the volume (its content is in a
    store a reparse point names, or EFS ciphertext), else ``""``."""
    why = _content_elsewhere(node) if node.is_reparse_point() else ""
    info = node.attributes[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
    if not why and info and info.file_attributes & ENCRYPTED:
        why = ENCRYPTED_WITH_EFS
    return why


def _content_elsewhere(node: Node) -> str:
    """Where a reparse point's file keeps its content if not in its data stream, else ``""``."""
    tag = int(node.attributes[ATTRIBUTE_TYPE_CODE.REPARSE_POINT][0].tag)
    algorithm = _wof_compressed(node)
    if algorithm is not None:
        if wof.readable(algorithm):
            return ""
        if algorithm == wof.LZX:
            return LZX_WITHOUT_WIMLIB
    if tag in CONTENT_ELSEWHERE:
        return CONTENT_ELSEWHERE[tag]
    if tag & CLOUD_TAG_MASK == CLOUD_TAG and node.size() and any(
            lcn is None for lcn, _count in _runs(node)):
        return NOT_DOWNLOADED
    return ""


def _runs(node: Node) -> list[tuple[int | None, int]]:
    """The unnamed data stream's runs (a resident stream has none: its bytes are present)."""
    data = [a for a in node.attributes[ATTRIBUTE_TYPE_CODE.DATA] if not a.name]
    if not data or data[0].resident:
        return []
    return [(lcn, count) for a in data for lcn, count in a.dataruns()]


def _path_of(node: Node) -> str:
    try:
        return "/" + str(node.full_path()).replace("\\", "/").lstrip("/")
    except Exception:  # a parent chain that does not resolve: the record number will do
        return f"MFT record {getattr(node, 'segment', '?')}"


def _valid_data_length(node: Node, stream: str) -> int | None:
    """The stream's ``ValidDataLength`` (non-resident streams; from the attribute record that
    starts at VCN 0), or ``None``."""
    for attr in node.attributes[ATTRIBUTE_TYPE_CODE.DATA]:
        if attr.name == stream and not attr.resident and attr.header.lowest_vcn in (None, 0):
            return int(attr.header.header.Form.Nonresident.ValidDataLength)
    return None

