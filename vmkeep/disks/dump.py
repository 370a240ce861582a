"""Files out of a restore point onto a stream (``restore files REF… --to -``), as restic's
``dump`` and borg's ``extract --stdout`` give them: one regular file as its bytes, anything else
(a folder, several selections, a link) as a POSIX tar archive.

Contract:

* :func:`dump_file` writes one regular file's content; :class:`TarDump` writes a pax archive
  (long names, files over 8 GiB, names that are not UTF-8 as their bytes) of the trees
  :meth:`TarDump.add_tree` is given — what a restore would create in its target folder, each
  selection under its own name — and ends it (:meth:`TarDump.close`).
* Members: folders, regular files and symlinks, with mode (set-id bits included: unpacking is
  the reader's decision), numeric owner and group, and modification time.  A file met again
  by its inode (a hard link, ``nlink > 1``) is a link member naming the first one written, as
  a restore links it; a file system's inodes are told apart per :meth:`TarDump.add_tree`.
* Extended attributes a restore would set are ``SCHILY.xattr.<name>`` pax records (GNU tar's
  ``--xattrs``, bsdtar by default; ``%`` and ``=`` in a name written ``%25``/``%3D`` as GNU
  tar does): a file backup's attributes of files and folders, and an NTFS file's alternate data
  streams as ``user.<stream>`` (:func:`~vmkeep.disks.restore_model.stream_xattr`; a stream none
  can hold is listed, ``stream-error``, and the file written without it; so is an attribute
  whose name is not UTF-8, ``xattr``).
* Left out, and listed as a restore lists them (:class:`RestoreWarning`, same reasons): names a
  restore refuses (:func:`unsafe_name`), special files, folders nested deeper than
  :data:`~vmkeep.disks.safe_restore.MAX_DEPTH` or met again (a cycle in a damaged guest file
  system).
* Reads ``source`` only and writes only to the stream: nothing on the local file system.
* Writes through :class:`~vmkeep.storage.stream_out.StreamWriter` (its typed errors for a
  closed pipe or a full disk behind ``>``).  A file whose content
  ends before its size is a :class:`~vmkeep.disks.errors.RestoreError`: a tar member cannot be
  shortened once its header is out, so the archive stops there.
"""

from __future__ import annotations

import stat
import tarfile
from collections.abc import Callable
from typing import BinaryIO, cast

from vmkeep.disks.errors import DiskError, RestoreError
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.restore_model import (
    EntrySource,
    RestoreSummary,
    RestoreWarning,
    StreamNotKept,
    is_utf8,
    stream_xattr,
    unsafe_link_target,
    unsafe_name,
)
from vmkeep.disks.safe_restore import MAX_DEPTH
from vmkeep.storage.stream_out import StreamWriter

BLOCK = 1 << 20


class _Counted:
    """The file ``path`` of ``source`` for :meth:`tarfile.TarFile.addfile` and
    :func:`dump_file`: exactly ``size`` bytes, or a :class:`RestoreError` (see the module
    docstring)."""

    def __init__(self, source: EntrySource, path: str, size: int,
                 progress: Callable[[int], None] | None) -> None:
        self.path, self.size, self.left, self.progress = path, size, size, progress
        try:
            self.reader = source.open(path)
        except DiskError as exc:
            raise RestoreError(f"cannot read {path!r}: {exc}") from exc

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes (all that are left when fewer), never fewer: tarfile takes a short
        block for the end of the data, and readers may return less than asked."""
        want = self.left if size < 0 else min(size, self.left)
        parts: list[bytes] = []
        got = 0
        while got < want:
            try:
                chunk = self.reader.read(want - got)
            except (DiskError, OSError) as exc:
                raise RestoreError(f"cannot read {self.path!r}: {exc}") from exc
            if not chunk:
                raise RestoreError(f"{self.path!r} ended {self.left - got} bytes before its "
                                   f"size ({self.size} bytes): the dump stops there")
            parts.append(chunk)
            got += len(chunk)
        self.left -= got
        if self.progress is not None and got:
            self.progress(got)
        return b"".join(parts)

    def close(self) -> None:
        self.reader.close()


def dump_file(source: EntrySource, path: str, entry: Entry, out: StreamWriter,
              progress: Callable[[int], None] | None = None) -> RestoreSummary:
    """The content of the regular file ``path`` of ``source`` onto ``out``; ``entry`` is what
    ``source.stat(path, follow=True)`` gave the caller (who chose this form by it)."""
    if entry.type != "file":
        raise RestoreError(f"{path!r} is not a regular file")
    content = _Counted(source, path, entry.size, progress)
    try:
        while chunk := content.read(BLOCK):
            out.write(chunk)
    finally:
        content.close()
    return RestoreSummary(files=1, bytes=entry.size)


class TarDump:
    """A pax archive written to ``out`` as trees are added (see the module docstring); use it
    in a ``with`` block: the archive is ended when the block ends normally, abandoned as it is
    when it raises (nothing more is written: no end blocks after half a member)."""

    def __init__(self, out: StreamWriter, progress: Callable[[int], None] | None = None) -> None:
        self.tar = tarfile.open(  # noqa: SIM115 - ended by close(): it outlives this call
            fileobj=cast(BinaryIO, out), mode="w|", format=tarfile.PAX_FORMAT,
            encoding="utf-8", errors="surrogateescape",
        )
        self.progress = progress
        self.summary = RestoreSummary()
        self._dirs: set[int] = set()
        self._links: dict[int, str] = {}

    def add_tree(self, source: EntrySource, top: str = "/") -> None:
        """Everything under the folder ``top`` of ``source``, each entry of it at the
        archive's top (a selection view's root holds the selections by their names).  Folders
        met again are told by their inodes in this ``source`` only: another volume's folders
        have numbers of their own."""
        self._dirs, self._links = set(), {}
        self._walk(source, top, "", 0)

    def _walk(self, source: EntrySource, folder: str, prefix: str, depth: int) -> None:
        try:
            entries = source.listdir(folder)
        except DiskError as exc:
            self._warn(folder, "read-error", str(exc))
            return
        for entry in sorted(entries, key=lambda e: e.name):
            path = f"{folder.rstrip('/')}/{entry.name}"  # in ``source`` (a view's own paths)
            self._one(source, entry, path, prefix, depth)

    def _one(
        self, source: EntrySource, entry: Entry, path: str, prefix: str, depth: int
    ) -> None:
        if (why := unsafe_name(entry.name)) is not None:
            self._warn(path, "unsafe-name", f"{entry.name!r}: {why}")
            return
        name = f"{prefix}{entry.name}"
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(entry.mode) or (0o755 if entry.type == "dir" else 0o644)
        info.uid, info.gid = entry.uid, entry.gid
        info.mtime = entry.mtime_ns // 1_000_000_000
        if entry.type in ("dir", "file"):
            info.pax_headers = self._xattrs(source, entry, path)
        if entry.type == "dir":
            if depth >= MAX_DEPTH:
                self._warn(path, "too-deep")
                return
            if entry.inode is not None:
                if entry.inode in self._dirs:
                    self._warn(path, "directory-cycle")
                    return
                self._dirs.add(entry.inode)
            info.type = tarfile.DIRTYPE
            self.tar.addfile(info)
            self.summary.dirs += 1
            self._walk(source, path, f"{name}/", depth + 1)
        elif entry.type == "symlink":
            if (why := unsafe_link_target(entry.link or "")) is not None:
                self._warn(path, "unsafe-name", why)
                return
            info.type, info.linkname = tarfile.SYMTYPE, entry.link or ""
            self.tar.addfile(info)
            self.summary.symlinks += 1
        elif entry.type == "file" and (first := self._first_link(entry, name)) is not None:
            info.type, info.linkname = tarfile.LNKTYPE, first
            self.tar.addfile(info)
            self.summary.hardlinks += 1
        elif entry.type == "file":
            info.size = entry.size
            content = _Counted(source, path, entry.size, self.progress)
            try:
                self.tar.addfile(info, cast(BinaryIO, content))
            finally:
                content.close()
            self.summary.files += 1
            self.summary.bytes += entry.size
        else:
            self._warn(path, "special-file", entry.kind or "other")

    def _first_link(self, entry: Entry, name: str) -> str | None:
        """The archive name a hard link of ``entry`` was first written under, or ``None``
        (then ``name`` is that name from now on)."""
        if entry.nlink < 2 or entry.inode is None:
            return None
        first = self._links.get(entry.inode)
        if first is None:
            self._links[entry.inode] = name
        return first

    def _xattrs(self, source: EntrySource, entry: Entry, path: str) -> dict[str, str]:
        """``entry``'s extended attributes as pax records (see the module docstring); values
        are bytes, kept as they are by ``surrogateescape`` (tarfile marks such a header
        ``hdrcharset=BINARY``)."""
        attrs = list(entry.xattrs)
        for stream in entry.streams if entry.type == "file" else ():
            try:
                attrs.append(stream_xattr(source, path, stream))
            except StreamNotKept as exc:
                self._warn(path, "stream-error", str(exc))
        records = {}
        for name, value in attrs:
            if not is_utf8(name):  # a pax keyword is UTF-8
                self._warn(path, "xattr", f"{name!r}: a name no tar header can hold")
                continue
            keyword = "SCHILY.xattr." + name.replace("%", "%25").replace("=", "%3D")
            records[keyword] = value.decode("utf-8", "surrogateescape")
        return records

    def _warn(self, path: str, reason: str, detail: str = "") -> None:
        self.summary.skipped.append(RestoreWarning(path, reason, detail))

    def __enter__(self) -> TarDump:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if kind is None:
            self.tar.close()  # the end blocks
            return
        # marked closed, unwritten: tarfile would end the archive when it is collected
        setattr(self.tar, "closed", True)  # noqa: B010 - not in tarfile's type stubs
        if self.tar.fileobj is not None:
            setattr(self.tar.fileobj, "closed", True)  # noqa: B010 - tarfile's own stream
