"""Restore guest files into a local directory without ever writing outside it.

Contract: ``restore(source, target, path="/", ...) -> RestoreSummary`` copies the tree at ``path``
of ``source`` (anything with ``stat(path)``, ``listdir(path) -> list[Entry]`` and ``open(path)``,
e.g. a :class:`~vmkeep.disks.fs.base.FileSystem`) into the existing directory ``target``.  Guest
data is hostile, so:

- every name is checked on its own (never by splitting a path): empty, ``.``, ``..``, names with
  ``/`` or NUL, and names over 255 bytes are refused (a ``\\`` is an ordinary character here, as
  it is in the Linux guest that wrote it);
- the target is walked only with ``openat``-style calls from a descriptor of the restore root,
  every component opened ``O_NOFOLLOW | O_DIRECTORY``; files are created ``O_CREAT | O_EXCL |
  O_NOFOLLOW``: an existing symlink, file or hard link in the target is never followed nor written
  through.  Existing entries are skipped (reported), or with ``overwrite=True`` unlinked first
  (the link itself, never its target); existing real directories are merged into;
- guest symlinks are recreated as symlinks with their target text unchanged and are never
  followed; hard links (same ``inode``, ``nlink > 1``) are re-linked inside the restore only;
- device nodes, fifos and sockets are skipped and reported; set-uid/set-gid bits are dropped
  unless ``keep_setid``; owners are restored only with ``preserve_owner`` (and root);
- file data is copied up to the entry's size, holes from run lists are skipped and all-zero
  chunks become holes; files larger than ``max_file_size`` are refused;
- content, mode and mtime are restored (directory modes/mtimes at the end);
- every refusal or per-file error becomes a :class:`RestoreWarning` in the summary and the
  restore carries on; ``progress(nbytes)`` is called as data is written;
- crash safety: a file is written under a temporary name in its target folder
  (:func:`vmkeep.storage.partial_files.part_name`, ``O_CREAT | O_EXCL | O_NOFOLLOW``), given its
  size and metadata, and only then published under its final name — without ``overwrite`` by a
  hard link that fails if the name appeared meanwhile (then the temporary is unlinked), with
  ``overwrite`` by an atomic ``rename`` over the old file (never over a directory).  A killed
  restore therefore leaves only complete files under final names, plus temporaries that the next
  restore into the same folders removes (when their writer is gone); guest names shaped like a
  temporary are refused (``unsafe-name``).  Files are not fsync'ed one by one: the guarantee is
  against the process dying, not against power loss;
- open descriptors are bounded: batches hold at most a quarter of the descriptors left under
  ``RLIMIT_NOFILE`` (:func:`fd_budget`).

Batch mode (additive): a source that also has ``write_files(jobs, progress)`` (see
:data:`FileBatchWriter`) gets the data of up to ``batch_files`` files at a time: the walk creates
each file exactly as above (``O_CREAT | O_EXCL | O_NOFOLLOW`` inside the target) and keeps its
descriptor; the source fills the descriptors (in any order, on any threads — e.g. reading each
pack range once), then the restorer truncates each file to its size, applies its metadata and
closes it, or unlinks it and reports the source's error.  The source only ever sees descriptors
of files this restore created, so every guarantee above holds.  A hard link to a file whose data
is still pending flushes the batch first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

from dissect.util.stream import RunlistStream

from vmkeep.disks.errors import DiskError, FileSystemError, RestoreError
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.restore_model import (
    EntrySource,
    Ownership,
    RestoreSummary,
    RestoreWarning,
    unsafe_link_target,
    unsafe_name,
)
from vmkeep.storage.partial_files import part_name, remove_stale

CHUNK = 1024 * 1024
MAX_DEPTH = 512
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
ZERO = bytes(CHUNK)
#: errnos of ``link`` on a file system without hard links (FAT, some SMB shares).
NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


def fd_budget(requested: int) -> int:
    """Files per batch: ``requested``, but at most a quarter of the descriptors this process
    may still open under ``RLIMIT_NOFILE`` (reader threads, pack files and directory
    descriptors need the rest), and at least one."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max(1, requested)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    return max(1, min(requested, (soft - in_use) // 4))


#: One file of a batch: the source path, its entry, and a descriptor of the new (empty) file.
FileJob = tuple[str, Entry, int]
#: ``write_files(jobs, progress) -> (bytes written, {source path: (reason, detail)})``: writes
#: each job's content into its descriptor with ``os.pwrite`` (all-zero ranges may be skipped);
#: ``reason`` is ``read-error`` or ``write-error`` for a file that did not come back whole.
FileBatchWriter = Callable[
    [list[FileJob], Callable[[int], None] | None], tuple[int, dict[str, tuple[str, str]]]
]


def _join(parent: str, name: str) -> str:
    return "/" + name if parent in ("", "/") else f"{parent}/{name}"


class _Restorer:
    def __init__(self, source: EntrySource, root_fd: int, **opts: object) -> None:
        self.src, self.root_fd = source, root_fd
        self.overwrite = bool(opts["overwrite"])
        ownership: Ownership = opts["ownership"]  # type: ignore[assignment]
        self.keep_setid = ownership.setid
        self.preserve_owner = ownership.owner and os.geteuid() == 0
        self.max_file_size = int(opts["max_file_size"])  # type: ignore[call-overload]
        self.progress: Callable[[int], None] | None = opts["progress"]  # type: ignore[assignment]
        self.summary = RestoreSummary()
        self.links: dict[int, tuple[tuple[str, ...], str]] = {}
        self.dir_meta: list[tuple[tuple[str, ...], Entry]] = []
        self.dir_inodes: set[int] = set()
        self.write_files: FileBatchWriter | None = getattr(source, "write_files", None)
        self.batch_files = fd_budget(int(opts.get("batch_files") or 1024))  # type: ignore[call-overload]
        self.pending: list[tuple[tuple[str, ...], str, Entry, str, int, str]] = []
        self.pending_inodes: set[int] = set()

    def warn(self, path: str, reason: str, detail: str = "") -> None:
        self.summary.skipped.append(RestoreWarning(path, reason, detail))

    def open_chain(self, comps: tuple[str, ...]) -> int:
        fd = os.dup(self.root_fd)
        try:
            for comp in comps:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def run(self, top: Entry) -> None:
        try:
            self._run(top)
            self.flush()
        finally:
            for job in self.pending:
                os.close(job[4])
                self.drop_temp(job[0], job[5])
            self.pending = []

    def _run(self, top: Entry) -> None:
        if top.type != "dir":
            remove_stale(self.root_fd)
            self.one(self.root_fd, (), top, top.path)
            return
        stack: list[tuple[str, tuple[str, ...]]] = [(top.path, ())]
        while stack:
            spath, comps = stack.pop()
            try:
                dfd = self.open_chain(comps)
            except OSError as exc:
                self.warn(spath, "not-a-directory", os.strerror(exc.errno or 0))
                continue
            remove_stale(dfd)  # temporaries a killed restore left in this folder
            try:
                entries = self.src.listdir(spath)
            except DiskError as exc:
                self.warn(spath, "read-error", str(exc))
                os.close(dfd)
                continue
            try:
                for entry in entries:
                    child = self.one(dfd, comps, entry, _join(spath, entry.name))
                    if child is not None:
                        stack.append(child)
            finally:
                os.close(dfd)
        self.flush()
        for comps, entry in reversed(self.dir_meta):
            try:
                fd = self.open_chain(comps)
            except OSError:
                continue
            try:
                self.apply_meta(fd, entry, is_dir=True)
            finally:
                os.close(fd)

    def one(
        self, dfd: int, comps: tuple[str, ...], entry: Entry, spath: str
    ) -> tuple[str, tuple[str, ...]] | None:
        why = unsafe_name(entry.name)
        if why:
            self.warn(spath, "unsafe-name", f"{entry.name!r}: {why}")
            return None
        name = entry.name
        try:
            if entry.type == "dir":
                if len(comps) >= MAX_DEPTH:
                    self.warn(spath, "too-deep")
                    return None
                if entry.inode is not None:
                    if entry.inode in self.dir_inodes:  # a cycle in a corrupt file system
                        self.warn(spath, "directory-cycle")
                        return None
                    self.dir_inodes.add(entry.inode)
                if self.make_dir(dfd, name, spath):
                    self.summary.dirs += 1
                    self.dir_meta.append(((*comps, name), entry))
                    return (spath, (*comps, name))
            elif entry.type == "symlink":
                self.make_symlink(dfd, name, entry, spath)
            elif entry.type == "file":
                self.make_file(dfd, comps, name, entry, spath)
            else:
                self.warn(spath, "special-file", entry.kind or "other")
        except OSError as exc:
            self.warn(spath, "write-error", f"{exc.strerror or exc}")
        return None

    def clear(self, dfd: int, name: str, spath: str, *, later: bool = False) -> bool:
        """Make room for ``name``: False (and a warning) if something is there and stays.
        ``later``: the entry will be replaced by :meth:`publish` (a rename), keep it till then."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return True
        if not self.overwrite or stat.S_ISDIR(st.st_mode):
            self.warn(spath, "exists", stat.filemode(st.st_mode))
            return False
        if not later:
            os.unlink(name, dir_fd=dfd)  # removes a planted link itself, never its target
        return True

    def new_temp(self, dfd: int) -> tuple[str, int]:
        """Create a fresh temporary file in ``dfd``: ``(name, descriptor)``."""
        tmp = part_name()
        return tmp, os.open(tmp, FILE_FLAGS, 0o600, dir_fd=dfd)

    def publish(self, dfd: int, tmp: str, name: str, spath: str) -> bool:
        """Give the complete temporary ``tmp`` its final ``name`` (see the module docstring);
        False (temporary removed, warning) if ``name`` is taken and must stay."""
        if self.overwrite:
            try:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise
                os.unlink(tmp, dir_fd=dfd)
                self.warn(spath, "exists", "directory")
                return False
        try:
            os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            os.unlink(tmp, dir_fd=dfd)
            self.warn(spath, "exists", "appeared during the restore")
            return False
        except OSError as exc:
            if exc.errno not in NO_LINKS:
                raise
            try:
                os.stat(name, dir_fd=dfd, follow_symlinks=False)
                taken = True
            except FileNotFoundError:
                taken = False
            if taken:
                os.unlink(tmp, dir_fd=dfd)
                self.warn(spath, "exists", "appeared during the restore")
                return False
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            return True
        os.unlink(tmp, dir_fd=dfd)
        return True

    def drop_temp(self, comps: tuple[str, ...], tmp: str) -> None:
        """Remove a temporary that will not be published (best effort)."""
        try:
            dfd = self.open_chain(comps)
        except OSError:
            return
        try:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
        finally:
            os.close(dfd)

    def make_dir(self, dfd: int, name: str, spath: str) -> bool:
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
            return True
        except FileExistsError:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return True  # merge into an existing real directory
            if self.overwrite:
                os.unlink(name, dir_fd=dfd)
                os.mkdir(name, 0o700, dir_fd=dfd)
                return True
            self.warn(spath, "not-a-directory", stat.filemode(st.st_mode))
            return False

    def make_symlink(self, dfd: int, name: str, entry: Entry, spath: str) -> None:
        target = entry.link or ""
        why = unsafe_link_target(target)
        if why is not None:
            self.warn(spath, "unsafe-name", why)
            return
        if self.clear(dfd, name, spath):
            os.symlink(target, name, dir_fd=dfd)
            self.apply_meta_at(dfd, name, entry)
            self.summary.symlinks += 1

    def make_file(
        self, dfd: int, comps: tuple[str, ...], name: str, entry: Entry, spath: str
    ) -> None:
        if entry.size > self.max_file_size:
            self.warn(spath, "too-large", f"{entry.size} bytes")
            return
        if entry.inode is not None and entry.inode in self.pending_inodes:
            self.flush()  # link only to a file whose data is in (or that failed and is gone)
        first = self.links.get(entry.inode) if entry.inode is not None else None
        if entry.nlink > 1 and first is not None:
            if self.clear(dfd, name, spath):
                src_fd = self.open_chain(first[0])
                try:
                    os.link(
                        first[1], name, src_dir_fd=src_fd, dst_dir_fd=dfd, follow_symlinks=False
                    )
                finally:
                    os.close(src_fd)
                self.summary.hardlinks += 1
            return
        if self.write_files is not None:
            self.defer_file(dfd, comps, name, entry, spath)
            return
        if not self.clear(dfd, name, spath, later=True):
            return
        try:
            src = self.src.open(spath)
        except DiskError as exc:
            self.warn(spath, "read-error", str(exc))
            return
        tmp, fd = self.new_temp(dfd)
        try:
            self.copy(src, fd, entry.size)
            self.apply_meta(fd, entry, is_dir=False)
        except BaseException as exc:
            os.close(fd)
            fd = -1
            os.unlink(tmp, dir_fd=dfd)
            if not isinstance(exc, DiskError):
                raise
            self.warn(spath, "read-error", str(exc))
            return
        finally:
            if fd >= 0:
                os.close(fd)
        if not self.publish(dfd, tmp, name, spath):
            return
        self.summary.files += 1
        if entry.nlink > 1 and entry.inode is not None:
            self.links[entry.inode] = (comps, name)

    def defer_file(
        self, dfd: int, comps: tuple[str, ...], name: str, entry: Entry, spath: str
    ) -> None:
        """Batch mode: create the temporary file now, fill and publish it in :meth:`flush`."""
        if not self.clear(dfd, name, spath, later=True):
            return
        tmp, fd = self.new_temp(dfd)
        self.pending.append((comps, name, entry, spath, fd, tmp))
        if entry.nlink > 1 and entry.inode is not None:
            self.links[entry.inode] = (comps, name)
            self.pending_inodes.add(entry.inode)
        if len(self.pending) >= self.batch_files:
            self.flush()

    def flush(self) -> None:
        """Batch mode: have the source fill the pending files, then finish or remove each."""
        if not self.pending:
            return
        assert self.write_files is not None
        jobs, self.pending = self.pending, []
        self.pending_inodes.clear()
        try:
            written, errors = self.write_files(
                [(spath, entry, fd) for _, _, entry, spath, fd, _ in jobs], self.progress
            )
        except DiskError as exc:
            written, errors = 0, {job[3]: ("read-error", str(exc)) for job in jobs}
        except BaseException:
            for comps, _, _, _, fd, tmp in jobs:
                os.close(fd)
                self.drop_temp(comps, tmp)
            raise
        self.summary.bytes += written
        folders: dict[tuple[str, ...], int] = {}
        try:
            for comps, name, entry, spath, fd, tmp in jobs:
                error = errors.get(spath)
                try:
                    if error is None:
                        os.ftruncate(fd, entry.size)
                        self.apply_meta(fd, entry, is_dir=False)
                except OSError as exc:
                    error = ("write-error", f"{exc.strerror or exc}")
                finally:
                    os.close(fd)
                dfd = folders.get(comps)
                if dfd is None:
                    try:
                        dfd = folders[comps] = self.open_chain(comps)
                    except OSError as exc:  # its folder went away meanwhile
                        self.warn(spath, "write-error", f"{exc.strerror or exc}")
                        continue
                if error is None:
                    try:
                        if self.publish(dfd, tmp, name, spath):
                            self.summary.files += 1
                            continue
                    except OSError as exc:
                        self.warn(spath, "write-error", f"{exc.strerror or exc}")
                else:
                    self.warn(spath, *error)
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=dfd)
                if entry.inode is not None and self.links.get(entry.inode) == (comps, name):
                    del self.links[entry.inode]
        finally:
            for dfd in folders.values():
                os.close(dfd)

    def copy(self, src: BinaryIO, fd: int, size: int) -> None:
        for off, length in data_ranges(src, size):
            src.seek(off)
            pos, end = off, off + length
            while pos < end:
                chunk = src.read(min(CHUNK, end - pos))
                if not chunk:  # the file system gave less than the file's size: never zeros
                    raise FileSystemError(
                        getattr(src, "fs_name", "the volume"),
                        f"{getattr(src, 'path', 'a file')}: its data ends at byte {pos} of "
                        f"{size}")
                if chunk != ZERO[: len(chunk)]:
                    os.pwrite(fd, chunk, pos)
                    self.summary.bytes += len(chunk)
                    if self.progress is not None:
                        self.progress(len(chunk))
                pos += len(chunk)
        os.ftruncate(fd, size)

    def mode_of(self, entry: Entry) -> int:
        mode = entry.mode & 0o7777
        return mode if self.keep_setid else mode & ~(stat.S_ISUID | stat.S_ISGID)

    def apply_meta(self, fd: int, entry: Entry, *, is_dir: bool) -> None:
        if self.preserve_owner:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, self.mode_of(entry) or (0o755 if is_dir else 0o644))
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def apply_meta_at(self, dfd: int, name: str, entry: Entry) -> None:
        try:
            if self.preserve_owner:
                os.chown(name, entry.uid, entry.gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:  # some platforms cannot set link times
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise


def data_ranges(stream: BinaryIO, size: int) -> Iterator[tuple[int, int]]:
    """Byte ranges of ``stream`` that may hold data, up to ``size`` (run lists skip holes).

    A stream NTFS compressed (dissect.ntfs's ``CompressedRunlistStream``, which has a
    ``compression_unit_size``) is read by whole compression units: the sparse run that ends a
    compressed unit is where its compressed clusters stop, not a hole — only a unit with no
    cluster at all reads as zeros."""
    inner = getattr(stream, "inner", stream)  # see through GuardedStream
    if not isinstance(inner, RunlistStream):
        yield (0, size)
        return
    unit = int(getattr(inner, "compression_unit_size", 0) or 0) or 1
    pos, start, end = 0, 0, 0  # [start, end): data found so far, not yet yielded
    for block, count in inner.runlist:
        length = count * inner.block_size
        if pos >= size:
            break
        if block is not None:
            first, last = pos // unit * unit, -(-(pos + length) // unit) * unit
            if first > end:
                if end > start:
                    yield (start, min(end, size) - start)
                start = first
            end = max(end, last)
        pos += length
    if end > start and start < size:
        yield (start, min(end, size) - start)


__all__ = [
    "EntrySource",
    "FileBatchWriter",
    "FileJob",
    "RestoreSummary",
    "RestoreWarning",
    "data_ranges",
    "restore",
    "unsafe_name",
]


def restore(
    source: EntrySource,
    target: str | os.PathLike[str],
    path: str = "/",
    *,
    overwrite: bool = False,
    ownership: Ownership = Ownership(),
    max_file_size: int = 1 << 44,
    progress: Callable[[int], None] | None = None,
    batch_files: int = 1024,
) -> RestoreSummary:
    """Restore ``path`` of ``source`` into the directory ``target`` (see the module docstring;
    ``batch_files``: files per batch when the source has ``write_files``)."""
    try:
        top = source.stat(path, follow=True)
    except DiskError as exc:
        raise RestoreError(f"cannot read {path!r}: {exc}") from exc
    try:
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"cannot open target {os.fspath(target)!r}: {exc.strerror}") from exc
    try:
        worker = _Restorer(
            source,
            root_fd,
            overwrite=overwrite,
            ownership=ownership,
            max_file_size=max_file_size,
            progress=progress,
            batch_files=batch_files,
        )
        if top.type != "dir" and top.name in ("", "/"):
            raise RestoreError(f"{path!r} is not a directory or file")
        worker.run(top)
        return worker.summary
    finally:
        os.close(root_fd)
