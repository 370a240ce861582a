"""Restore paths of a restore point back into a guest, through an ``sftp://`` / ``smb://`` URL.

:func:`restore_to_url` restores a file point's paths; :func:`write_sources` writes the paths of
any :class:`~vmkeep.disks.restore_model.EntrySource` (the file systems of an image point's
volumes: :func:`vmkeep.browse.remote.restore_image_paths_to_url`).  Same selection rules and
summary as :func:`vmkeep.guestfiles.restore.restore_paths` (``/`` = the whole tree's contents into
the target directory; other paths by their own name, each name given once per target).  Guest
data is hostile and so is the guest's target tree, so:

* every name is checked on its own with :func:`vmkeep.disks.safe_restore.unsafe_name` (``..``,
  separators — ``\\`` too over SMB —, NUL, overlong; over SMB also bytes that are not UTF-8,
  which UTF-16 names cannot spell — over SFTP, whose paths are bytes, they are written as they
  were) and remote paths are only ever built from checked names;
* an existing entry is looked at with ``lstat`` (never followed): a symlink or file where a
  directory should be is refused; existing files and links are skipped, or with ``overwrite``
  removed first (the link itself, never its target) before writing;
* special files are skipped; set-id bits dropped.  SFTP restores mode, mtime (whole seconds) and
  symlinks; SMB restores mtime (microseconds) — no modes, no symlinks (reported ``unsupported``).
  Hard links are written as separate files.  Directory times are set last.  The holes a sparse
  file kept at backup (zero runs), the holes of a guest file system's file and zero blocks
  are skipped with a seek, not sent.
* a guest file system that fails to read a file (damaged, or short of the file's size) is a
  ``read-error`` for that file, whose partial copy is removed; the restore goes on.  So is a
  request the server refuses (no space, no permission): that entry's ``write-error``.
* the target folder must exist and be a folder (:class:`RestoreTargetMissing`, else
  :class:`RestoreTargetError`, before anything is written); a lost connection raises
  :class:`RestoreTargetError`.

Per-entry problems are warnings in the summary.  Nothing is retried.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import fsspec

from vmkeep.disks.errors import DiskError, FileSystemError
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.restore_model import EntrySource, RestoreSummary, unsafe_link_target
from vmkeep.disks.safe_restore import RestoreWarning, data_ranges, unsafe_name
from vmkeep.disks.selection import TargetNames
from vmkeep.errors import InputError
from vmkeep.guestfiles.restore import FileRestoreSummary
from vmkeep.guestfiles.tree import PointTree, normalize
from vmkeep.storage.errors import RestoreTargetError, RestoreTargetMissing
from vmkeep.storage.file_manifest import FilePoint
from vmkeep.storage.repository import Repository

COPY = 1 << 20
_ZEROS = bytes(COPY)


class _Sftp:
    shown = ""  # the URL, for messages (no password)
    symlinks = True
    backslash = False  # a character in a path over SFTP
    unicode_names = False  # SFTP paths are bytes: a Latin-1 name goes back as it was

    def __init__(self, fs: Any, root: str) -> None:
        self.ftp, self.root = fs.ftp, root.rstrip("/") or "/"

    def path(self, comps: list[str]) -> bytes:
        """The remote path as bytes (names that are not UTF-8 kept by ``surrogateescape``)."""
        return os.fsencode("/".join([self.root.rstrip("/"), *comps]) if comps else self.root)

    def lstat_mode(self, comps: list[str]) -> int | None:
        try:
            return int(self.ftp.lstat(self.path(comps)).st_mode)
        except OSError:
            return None

    def connected(self) -> bool:
        """Whether the SFTP session still stands (paramiko reports a closed one as a plain
        ``OSError`` without errno, as it does a generic refusal: ``SSH_FX_FAILURE``)."""
        channel = self.ftp.get_channel()
        return bool(channel is not None and not channel.closed
                    and channel.get_transport().is_active())

    def root_mode(self) -> int | None:
        """The target folder's mode, links followed (``None``: not there)."""
        try:
            return int(self.ftp.stat(self.path([])).st_mode)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def mkdir(self, comps: list[str]) -> None:
        self.ftp.mkdir(self.path(comps), 0o700)

    def remove(self, comps: list[str]) -> None:
        self.ftp.remove(self.path(comps))

    def open_write(self, comps: list[str]) -> Any:
        return self.ftp.open(self.path(comps), "wb")

    def symlink(self, comps: list[str], target: str) -> None:
        self.ftp.symlink(os.fsencode(target), self.path(comps))

    def set_meta(self, comps: list[str], entry: Entry) -> None:
        if entry.type == "symlink":
            return
        mode = entry.mode & 0o777 & ~(stat.S_ISUID | stat.S_ISGID)
        self.ftp.chmod(self.path(comps), mode or (0o755 if entry.type == "dir" else 0o644))
        t = entry.mtime_ns // 1_000_000_000
        self.ftp.utime(self.path(comps), (t, t))

    def close(self) -> None:
        pass


class _Smb:
    shown = ""  # the URL, for messages (no password)
    symlinks = False
    backslash = True  # SMB separates paths with it
    unicode_names = True  # UTF-16 names: bytes that are not UTF-8 have no spelling there

    def __init__(self, fs: Any, root: str) -> None:
        import smbclient

        self.smb, self.kw = smbclient, {"port": fs._port}
        self.root = "\\\\" + fs.host + root.replace("/", "\\").rstrip("\\")

    def path(self, comps: list[str]) -> str:
        return "\\".join([self.root, *comps])

    def lstat_mode(self, comps: list[str]) -> int | None:
        try:
            return int(self.smb.lstat(self.path(comps), **self.kw).st_mode)
        except OSError:
            return None

    def connected(self) -> bool:
        """Always: smbprotocol reports a lost session with its own exception types."""
        return True

    def root_mode(self) -> int | None:
        """The target folder's mode, links followed (``None``: not there)."""
        try:
            return int(self.smb.stat(self.path([]), **self.kw).st_mode)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def mkdir(self, comps: list[str]) -> None:
        self.smb.mkdir(self.path(comps), **self.kw)

    def remove(self, comps: list[str]) -> None:
        self.smb.remove(self.path(comps), **self.kw)

    def open_write(self, comps: list[str]) -> Any:
        return self.smb.open_file(self.path(comps), mode="wb", **self.kw)

    def symlink(self, comps: list[str], target: str) -> None:
        raise NotImplementedError

    def set_meta(self, comps: list[str], entry: Entry) -> None:
        if entry.type != "symlink":
            self.smb.utime(self.path(comps), ns=(entry.mtime_ns, entry.mtime_ns), **self.kw)

    def close(self) -> None:
        pass


def _refused(target: _Sftp | _Smb, name: str) -> str | None:
    """Why ``name`` cannot be written into ``target`` as one name, or ``None``."""
    return unsafe_name(name, backslash=target.backslash, unicode=target.unicode_names)


class _Writer:
    def __init__(self, source: EntrySource, target: Any, summary: RestoreSummary,
                 overwrite: bool, progress: Callable[[int], None] | None) -> None:
        self.source, self.t, self.summary = source, target, summary
        self.overwrite, self.progress = overwrite, progress
        self.dirs: list[tuple[list[str], Entry]] = []

    def warn(self, path: str, reason: str, detail: str = "") -> None:
        self.summary.skipped.append(RestoreWarning(path, reason, detail))

    def room(self, comps: list[str], path: str) -> bool:
        mode = self.t.lstat_mode(comps)
        if mode is None:
            return True
        if not self.overwrite or stat.S_ISDIR(mode):
            self.warn(path, "exists", stat.filemode(mode))
            return False
        self.t.remove(comps)
        return True

    @contextlib.contextmanager
    def refusals(self, path: str) -> Iterator[None]:
        """What the server refuses while ``path`` is written (no space, no permission, a name
        it cannot take) is that entry's ``write-error``; a lost session raises."""
        try:
            yield
        except OSError as exc:
            if _session_lost(exc, self.t):
                raise
            self.warn(path, "write-error", f"{type(exc).__name__}: {exc}")

    def one(self, entry: Entry, comps: list[str]) -> None:
        """Write ``entry`` at ``comps`` (see :meth:`refusals`)."""
        with self.refusals(entry.path):
            self._one(entry, comps)

    def finish(self) -> None:
        """Set the times (and modes) of the directories written, deepest first."""
        for comps, entry in reversed(self.dirs):
            with self.refusals(entry.path):
                self.t.set_meta(comps, entry)

    def _one(self, entry: Entry, comps: list[str]) -> None:
        path = entry.path
        if entry.type == "dir":
            mode = self.t.lstat_mode(comps)
            if mode is None:
                self.t.mkdir(comps)
            elif not stat.S_ISDIR(mode):
                self.warn(path, "not-a-directory", stat.filemode(mode))
                return
            self.summary.dirs += 1
            self.dirs.append((comps, entry))
            try:
                children = self.source.listdir(path)
            except DiskError as exc:  # a damaged directory of the guest's file system
                self.warn(path, "read-error", str(exc))
                return
            for child in children:
                self.child(child, comps)
        elif entry.type == "symlink":
            if not self.t.symlinks:
                self.warn(path, "unsupported", "symlinks cannot be created over this protocol")
            elif (why := unsafe_link_target(entry.link or "")) is not None:
                self.warn(path, "unsafe-name", why)
            elif self.room(comps, path):
                self.t.symlink(comps, entry.link or "")
                self.summary.symlinks += 1
        elif entry.type == "file":
            if self.room(comps, path):
                self.copy(entry, comps)
        else:
            self.warn(path, "special-file", entry.kind or "other")

    def child(self, entry: Entry, comps: list[str]) -> None:
        """Write ``entry`` into the directory ``comps`` under its own name, if it is safe."""
        why = _refused(self.t, entry.name)
        if why:
            self.warn(entry.path, "unsafe-name", f"{entry.name!r}: {why}")
        else:
            self.one(entry, [*comps, entry.name])

    def copy(self, entry: Entry, comps: list[str]) -> None:
        """Write one file, sending only its data: holes and zero blocks are skipped with a
        seek, so the server leaves holes (a file ending in one is extended by ``truncate``).
        A read failure of the guest's file system removes the partial copy (``read-error``)."""
        try:
            src = self.source.open(entry.path)
            with self.t.open_write(comps) as out:
                end = 0  # where the written data ends
                for offset, length in self.ranges(entry, src):
                    end = self.send(src, out, offset, length, entry) or end
                if end != entry.size:
                    out.flush()
                    out.truncate(entry.size)
        except DiskError as exc:
            self.warn(entry.path, "read-error", str(exc))
            with contextlib.suppress(OSError):
                self.t.remove(comps)
            return
        except OSError:
            with contextlib.suppress(OSError):
                self.t.remove(comps)  # no partial copy (not even when the server is gone)
            raise
        self.t.set_meta(comps, entry)
        self.summary.files += 1

    def ranges(self, entry: Entry, src: Any) -> list[tuple[int, int]]:
        """``(offset, length)`` of the file that may hold data: a file point's tree knows its
        holes (zero runs kept at backup); a guest file system's run lists say where data is."""
        holes = getattr(self.source, "holes", None)
        if holes is None:
            return list(data_ranges(src, entry.size))
        out, pos = [], 0
        for hole, length in [*holes(entry.path), (entry.size, 0)]:
            if hole > pos:
                out.append((pos, hole - pos))
            pos = hole + length
        return out

    def send(self, src: Any, out: Any, offset: int, length: int, entry: Entry) -> int:
        """Copy ``length`` bytes at ``offset``; returns where the last block written ends
        (0: all zeros, nothing written)."""
        src.seek(offset)
        pos, end, written = offset, offset + length, 0
        while pos < end:
            data = src.read(min(COPY, end - pos))
            if not data:  # the file system gave less than the file's size: never zeros
                raise FileSystemError(getattr(src, "fs_name", "the volume"),
                                      f"{entry.path}: its data ends at byte {pos} of {entry.size}")
            if data != _ZEROS[: len(data)]:
                out.seek(pos)
                out.write(data)
                written = pos + len(data)
                self.summary.bytes += len(data)
                if self.progress:
                    self.progress(len(data))
            pos += len(data)
        return written


def connect(url: str, options: dict[str, Any]) -> _Sftp | _Smb:
    """The existing remote directory ``url`` as a restore target (``InputError`` when the
    server cannot be reached or refuses the login)."""
    from vmkeep.guestfiles.backup import redact, remote_protocol

    remote_protocol(url, "target")
    try:
        fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
    except Exception as exc:  # paramiko/smbprotocol raise many unrelated types
        raise InputError(f"cannot connect to {redact(url)}: {type(exc).__name__}: {exc}") from None
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    target = _Sftp(fs, root) if protocol in ("sftp", "ssh") else _Smb(fs, root)
    target.shown = redact(url)
    try:
        mode = target.root_mode()
    except OSError as exc:
        target.close()
        raise RestoreTargetError(target.shown, f"{type(exc).__name__}: {exc}") from None
    if mode is None or not stat.S_ISDIR(mode):
        target.close()
        if mode is None:
            raise RestoreTargetMissing(target.shown, root)
        raise RestoreTargetError(target.shown, f"{root} is not a folder")
    return target


def write_sources(
    sources: list[tuple[str, EntrySource, list[str]]],
    target: _Sftp | _Smb,
    summary: RestoreSummary,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write the paths of each source (``(where, source, paths)``: ``where`` names a volume,
    ``p1:``, in ``duplicate-name`` reports) into ``target``; counts and warnings go into
    ``summary``.  Every path is looked up before anything is written."""
    names = TargetNames()  # one target folder: names given out so far, across sources
    chosen = []
    for where, source, paths in sources:
        for path in paths:
            source.stat(path)  # a missing path raises before anything is written
        chosen.append((source, names.unique_paths(source, paths, summary.skipped, where)))
    try:
        for source, paths in chosen:
            writer = _Writer(source, target, summary, overwrite, progress)
            for path in paths:
                if path.strip("/") == "":
                    for child in source.listdir("/"):
                        writer.child(child, [])
                else:
                    top = source.stat(path)
                    writer.one(top, [top.name])
            writer.finish()
    except Exception as exc:
        if _session_lost(exc, target):
            raise RestoreTargetError(
                target.shown, f"the connection was lost ({type(exc).__name__}: {exc}); the files "
                "written before stay, the one being written may be incomplete") from None
        raise


def _session_lost(exc: BaseException, target: _Sftp | _Smb) -> bool:
    """Whether ``exc`` says the server or the session is gone, not that one request was
    refused: a broken connection, paramiko's ``SSHException``, smbprotocol's ``SMBException``
    other than a status error, or an ``OSError`` once the session no longer stands (paramiko
    reports a closed channel as an errno-less ``OSError``, as it does ``SSH_FX_FAILURE``)."""
    from paramiko import SSHException
    from smbprotocol.exceptions import SMBException

    if isinstance(exc, ConnectionError | TimeoutError | EOFError | SSHException):
        return True
    if isinstance(exc, SMBException) and not isinstance(exc, OSError):
        return True
    return isinstance(exc, OSError) and not target.connected()


def restore_to_url(
    repo: Repository,
    point: FilePoint,
    paths: list[str],
    url: str,
    options: dict[str, Any],
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> FileRestoreSummary:
    """Restore ``paths`` of the file point ``point`` into the existing remote directory
    ``url``."""
    from vmkeep.guestfiles.backup import redact

    target = connect(url, options)
    try:
        summary = FileRestoreSummary(point=point.id, target=redact(url))
        chosen = [normalize(p) for p in (paths or ["/"])]
        write_sources([("", PointTree(repo, point), chosen)], target, summary,
                      overwrite=overwrite, progress=progress)
    finally:
        target.close()
    return summary
