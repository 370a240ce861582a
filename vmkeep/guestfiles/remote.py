"""Remote sources over fsspec URLs: ``sftp://`` (Linux guests) and ``smb://`` (Windows shares).

fsspec parses the URL and opens the session (paramiko for SFTP, smbprotocol for SMB); the walk
then talks to the session directly to get the metadata each protocol has in one listing call:

=========  =====================================================================================
protocol   metadata per entry
=========  =====================================================================================
SFTP v3    type, mode, uid/gid, owner/group names (from OpenSSH's long names), size, mtime in
           whole seconds, symlink targets (``readlink``).  No ctime, inode or hard links, no
           xattrs: changes within the same second at the same size are not detected.
SMB 2/3    type (files and directories; the server resolves symlinks), size, mtime and change
           time with microsecond resolution, a file id as inode, a large file's holes
           (``FSCTL_QUERY_ALLOCATED_RANGES``: not read, restored as holes).  No Unix modes or
           owners (restores use the defaults), no symlinks, no hard links.
=========  =====================================================================================

Contract otherwise as :class:`vmkeep.guestfiles.local.LocalSource`: entries parents first,
siblings sorted by name bytes (names are UTF-8), unreadable directories reported and kept empty,
excludes applied, a directory holding a ``CACHEDIR.TAG`` with the standard signature left out
(``exclude_caches``; each directory is listed before it is yielded, so this costs no round trip
but a read of the tag where one is); ``changed`` stats the file again after reading.  Neither
protocol shows mount points: ``--one-file-system`` is refused for them
(:func:`vmkeep.guestfiles.backup.open_source`).  Credentials come in
``storage_options`` (``password``, ``key_filename``, …), never from the recorded URL.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import fsspec

from vmkeep.errors import InputError
from vmkeep.guestfiles.excludes import Excludes
from vmkeep.storage.file_backup import FileSource, Warn
from vmkeep.storage.file_manifest import FileEntry

SMB_DIRECTORY = 0x10
SMB_REPARSE_POINT = 0x400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFIFO: "fifo", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFSOCK: "sock"}


def _ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def _join(root: str, path: bytes, sep: str = "/") -> str:
    rel = path.decode("utf-8", "surrogateescape").strip("/")
    if not rel:
        return root
    return root.rstrip(sep) + sep + rel.replace("/", sep)


class _RemoteWalk:
    """Walk shared by both protocols; subclasses list one directory."""

    has_xattrs = False
    location = ""

    def __init__(self, excludes: Excludes, exclude_caches: bool = True) -> None:
        self.excludes, self.exclude_caches = excludes, exclude_caches

    def root_entry(self) -> FileEntry:
        raise NotImplementedError

    def listdir(self, path: bytes) -> list[FileEntry]:
        raise NotImplementedError

    def open(self, entry: FileEntry) -> BinaryIO:
        raise NotImplementedError

    def walk(self, warn: Warn) -> Iterator[FileEntry]:
        try:
            root = self.root_entry()
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.location}: {exc}") from None
        if root.type != "dir":
            raise InputError(f"{self.location}: not a directory")
        yield root
        stack = [iter(self._children(b"/", warn) or [])]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            if entry.type != "dir":
                yield entry
                continue
            children = self._children(entry.path, warn)  # listed first: it may be a cache
            if children is not None:
                yield entry
                stack.append(iter(children))

    def _children(self, path: bytes, warn: Warn) -> list[FileEntry] | None:
        """The directory's entries, sorted and filtered; ``None`` for a tagged cache directory
        (not the root), which is left out with an ``excluded-cache`` warning."""
        try:
            entries = self.listdir(path)
        except (OSError, ValueError) as exc:
            warn(path.decode("utf-8", "backslashreplace"), "unreadable-dir", str(exc))
            return []
        if path != b"/" and self.exclude_caches and self._tagged(entries):
            warn(path.decode("utf-8", "backslashreplace"), "excluded-cache", "CACHEDIR.TAG")
            return None
        entries.sort(key=lambda e: e.name)
        if self.excludes:
            entries = [
                e for e in entries
                if not self.excludes.match(e.path[1:].decode("utf-8", "surrogateescape"),
                                           e.type == "dir")
            ]
        return entries

    def _tagged(self, entries: list[FileEntry]) -> bool:
        """Whether ``entries`` hold a ``CACHEDIR.TAG`` file with the standard signature."""
        from vmkeep.guestfiles.local import CACHEDIR_SIGNATURE, CACHEDIR_TAG

        tag = next((e for e in entries if e.name == CACHEDIR_TAG and e.type == "file"), None)
        if tag is None:
            return False
        try:
            with self.open(tag) as f:
                return bytes(f.read(len(CACHEDIR_SIGNATURE))) == CACHEDIR_SIGNATURE
        except (OSError, ValueError):
            return False

    def read_xattrs(self, entry: FileEntry) -> list[tuple[bytes, bytes]] | None:
        return None


class SftpSource(_RemoteWalk):
    """A tree on an SFTP server (see the module docstring for the metadata it has)."""

    def __init__(self, fs: Any, root: str, location: str, excludes: Excludes,
                 exclude_caches: bool = True) -> None:
        super().__init__(excludes, exclude_caches)
        self.fs, self.ftp, self.root, self.location = fs, fs.ftp, root or "/", location

    def _entry(self, path: bytes, attr: Any) -> FileEntry:
        kind = _TYPES.get(stat.S_IFMT(attr.st_mode or 0), "file")
        owner = group = None
        long = (getattr(attr, "longname", None) or "").split()
        if len(long) >= 4:
            owner, group = long[2], long[3]
        e = FileEntry(path, kind, stat.S_IMODE(attr.st_mode or 0), attr.st_uid, attr.st_gid,
                      owner, group, int(attr.st_mtime or 0) * 1_000_000_000,
                      size=int(attr.st_size or 0) if kind == "file" else 0)
        if kind == "symlink":
            e.link = self.ftp.readlink(_join(self.root, path)).encode("utf-8", "surrogateescape")
        return e

    def root_entry(self) -> FileEntry:
        return self._entry(b"/", self.ftp.lstat(self.root))

    def listdir(self, path: bytes) -> list[FileEntry]:
        prefix = b"" if path == b"/" else path
        return [
            self._entry(prefix + b"/" + a.filename.encode("utf-8", "surrogateescape"), a)
            for a in self.ftp.listdir_attr(_join(self.root, path))
        ]

    def open(self, entry: FileEntry) -> BinaryIO:
        f = self.ftp.open(_join(self.root, entry.path), "rb")
        f.prefetch(entry.size)
        return f

    def changed(self, entry: FileEntry, f: BinaryIO, nread: int) -> str | None:
        st = f.stat()  # type: ignore[attr-defined]
        if nread != entry.size or st.st_size != entry.size:
            return f"size {entry.size} at walk, {st.st_size} now, {nread} read"
        if int(st.st_mtime) * 1_000_000_000 != entry.mtime_ns:
            return "modified while read"
        return None

    def close(self) -> None:
        self.fs.client.close()


class SmbSource(_RemoteWalk):
    """A tree on an SMB share (see the module docstring for the metadata it has)."""

    def __init__(self, fs: Any, root: str, location: str, excludes: Excludes,
                 exclude_caches: bool = True) -> None:
        super().__init__(excludes, exclude_caches)
        import smbclient

        self.smb, self.fs, self.location = smbclient, fs, location
        self.unc_root = "\\\\" + fs.host + root.replace("/", "\\").rstrip("\\")
        self.kw = {"port": fs._port}

    def unc(self, path: bytes) -> str:
        return _join(self.unc_root, path, "\\")

    def root_entry(self) -> FileEntry:
        st = self.smb.stat(self.unc_root, **self.kw)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        return FileEntry(b"/", kind, None, mtime_ns=st.st_mtime_ns // 1000 * 1000,
                         ctime_ns=st.st_chgtime_ns, inode=st.st_ino)

    def listdir(self, path: bytes) -> list[FileEntry]:
        prefix = b"" if path == b"/" else path
        out = []
        for de in self.smb.scandir(self.unc(path), **self.kw):
            info = de.smb_info
            is_dir = bool(info.file_attributes & SMB_DIRECTORY)
            out.append(FileEntry(
                prefix + b"/" + de.name.encode("utf-8", "surrogateescape"),
                "dir" if is_dir else "file",
                None,
                mtime_ns=_ns(info.last_write_time),
                ctime_ns=_ns(info.change_time),
                inode=info.file_id,
                size=0 if is_dir else int(info.end_of_file),
            ))
        return out

    def open(self, entry: FileEntry) -> BinaryIO:
        return self.smb.open_file(self.unc(entry.path), mode="rb", **self.kw)

    def sparse_layout(self, f: BinaryIO) -> tuple[int, list[tuple[int, int]]] | None:
        """``(size, data ranges)`` of a file on the share that has holes, as the server reports
        them (:mod:`vmkeep.guestfiles.smb_ranges`); ``None`` when all of it is data or the
        server does not say (read it whole)."""
        from vmkeep.guestfiles.smb_ranges import allocated_ranges

        raw: Any = getattr(f, "raw", f)
        try:
            size = int(raw.fd.end_of_file)
        except (AttributeError, TypeError, ValueError):
            return None
        ranges = allocated_ranges(raw, size)
        if ranges is None or sum(n for _, n in ranges) >= size:
            return None
        return size, ranges

    def changed(self, entry: FileEntry, f: BinaryIO, nread: int) -> str | None:
        st = self.smb.stat(self.unc(entry.path), **self.kw)
        if nread != entry.size or st.st_size != entry.size:
            return f"size {entry.size} at walk, {st.st_size} now, {nread} read"
        if st.st_mtime_ns // 1000 * 1000 != entry.mtime_ns:
            return "modified while read"
        return None

    def close(self) -> None:
        pass


def open_remote(url: str, options: dict[str, Any], excludes: Excludes,
                exclude_caches: bool = True) -> FileSource:
    """Connect to ``url`` (``sftp://`` or ``smb://``) with fsspec; raise ``InputError`` if not."""
    from vmkeep.guestfiles.backup import redact

    location = redact(url)
    try:
        fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
    except Exception as exc:  # paramiko/smbprotocol raise many unrelated types
        raise InputError(f"cannot connect to {location}: {type(exc).__name__}: {exc}") from None
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    if protocol in ("sftp", "ssh"):
        return SftpSource(fs, root, location, excludes, exclude_caches)
    return SmbSource(fs, root, location, excludes, exclude_caches)
