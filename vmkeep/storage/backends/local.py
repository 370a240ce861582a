"""Local (and locally mounted NAS) backend with crash-safe atomic commits.

``put`` writes ``<dir>/.vmkeep-tmp-<random>``, fsyncs the file, renames it over the final name
and fsyncs the directory — the sequence restic's local backend uses — so neither an exception nor
a power cut can leave a partial object under its final name.  Temporary files left by a crash are
never listed and are removed by prune.

Objects of 1 MiB and more (packs) on ext4, XFS and Btrfs are written with ``O_DIRECT``
(:mod:`vmkeep.storage.backends.direct_io`): no page-cache copy, no eviction of the server's
cache.  ``VMKEEP_DIRECT_IO=0`` turns that off; mounted NAS shares always write buffered.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator, Sequence

from vmkeep.storage.backend import TEMP_MARKER, Backend
from vmkeep.storage.backends import direct_io
from vmkeep.storage.errors import (
    ObjectNotFound,
    StorageError,
    TargetFull,
    TargetPermissionDenied,
    TargetUnreachable,
)
from vmkeep.storage.rate_limit import paced_slices

#: Most buffers one ``writev`` call takes (POSIX guarantees at least 16).
IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16, 1024))


def write_all(fd: int, parts: Sequence[bytes | memoryview]) -> int:
    """Write every part, in order, with as few ``writev`` calls as possible (short writes are
    resumed).  Returns the bytes written."""
    if not hasattr(os, "writev"):  # not on Windows
        parts = [b"".join(parts)]
    views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
    total = i = 0
    while i < len(views):
        rest = views[i : i + IOV_MAX]
        n = os.write(fd, rest[0]) if len(rest) == 1 else os.writev(fd, rest)
        if n <= 0:
            raise OSError(errno.EIO, "write returned 0")
        total += n
        while n:
            head = views[i]
            if n >= head.nbytes:
                n -= head.nbytes
                i += 1
            else:
                views[i] = head[n:]
                n = 0
    return total


def _translate(exc: OSError, key: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TargetFull(key, exc.strerror)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TargetPermissionDenied(f"{key}: {exc.strerror}")
    if exc.errno == errno.ENOENT:
        return ObjectNotFound(key)
    return TargetUnreachable(key, exc.strerror or str(exc))


def _refuse_file_in_the_way(root: str) -> None:
    """:class:`TargetUnreachable` naming it when ``root`` or the nearest of its folders that
    exists is not a folder (a file given as ``--repo``: every object would fail with "Not a
    directory", named by its key)."""
    path = root
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise TargetUnreachable(root, f"{path} is not a folder")


class LocalBackend(Backend):
    """Objects as files under ``root``; see the module docstring for the commit protocol."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.location = self.root
        self._direct: bool | None = None  # O_DIRECT for large objects; decided on first use
        _refuse_file_in_the_way(self.root)

    def _use_direct(self, size: int) -> bool:
        if size < direct_io.MIN_SIZE:
            return False
        if self._direct is None:
            if not os.path.isdir(self.root):  # not created yet: decide once it exists
                return False
            self._direct = direct_io.supported(self.root)
        return self._direct

    def top_level_names(self) -> tuple[str, ...] | None:
        try:
            return tuple(sorted(os.listdir(self.root)))
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise _translate(exc, "") from exc

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return os.path.join(self.root, *key.split("/"))

    def free_space(self) -> tuple[int, int] | None:
        """``statvfs`` of the location (what an unprivileged writer may use); ``None`` when it
        does not exist yet."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.put_parts(key, [data])

    def put_paced(self, key: str, data: bytes | memoryview, pace: Callable[[int], None]) -> None:
        """``put`` written slice by slice (buffered), ``pace`` called before each slice."""
        self.put_parts(key, [data], pace=pace)

    def put_parts(
        self,
        key: str,
        parts: Sequence[bytes | memoryview],
        written: Callable[[], None] | None = None,
        pace: Callable[[int], None] | None = None,
    ) -> None:
        """``put`` of ``b"".join(parts)``, written with ``os.writev`` (no joined copy), or for
        large objects on a local file system copied once into an aligned buffer and written
        with ``O_DIRECT`` (see the module docstring).
        ``written`` is called once ``parts`` is no longer used (every byte written, or copied
        for an ``O_DIRECT`` write) and before the ``fsync``: the caller may free the parts; the
        object is not yet durable.  ``pace`` (a bandwidth limit's booking) is called before each
        slice of at most :data:`~vmkeep.storage.rate_limit.SLICE` bytes; paced writes are
        buffered."""
        path = self._path(key)
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, TEMP_MARKER + secrets.token_hex(8))
        try:
            os.makedirs(directory, exist_ok=True)
            fd: int | None = None
            if pace is None and self._use_direct(sum(memoryview(p).nbytes for p in parts)):
                fd = direct_io.open_direct(tmp)
                if fd is None:  # refused after all (EINVAL): buffered from now on
                    self._direct = False
            direct = fd is not None
            if fd is None:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if direct:
                    direct_io.write_direct(fd, parts, written)
                elif pace is not None:
                    for piece in paced_slices(parts, pace):
                        write_all(fd, [piece])
                    if written is not None:
                        written()
                else:
                    write_all(fd, parts)
                    if written is not None:
                        written()
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno == errno.ENOENT:  # not a missing object: its folder cannot be made
                raise TargetUnreachable(self.root, f"cannot create {key}: {exc.strerror}") from exc
            raise _translate(exc, key) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except OSError as exc:
            raise _translate(exc, key) from exc
        try:
            if length is None:
                length = os.fstat(fd).st_size - offset
            chunks = []
            while length > 0:
                piece = os.pread(fd, length, offset)
                if not piece:
                    break
                chunks.append(piece)
                offset += len(piece)
                length -= len(piece)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except OSError as exc:
            raise _translate(exc, key) from exc
        finally:
            os.close(fd)

    def size(self, key: str) -> int:
        try:
            return os.stat(self._path(key)).st_size
        except OSError as exc:
            raise _translate(exc, key) from exc

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for key, size, _mtime in self.list_times(prefix):
            yield key, size

    def list_times(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        base = self._path(prefix)
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in files:
                if name.startswith(TEMP_MARKER):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield f"{rel}/{name}", st.st_size, st.st_mtime

    def list_temporary(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        """Files named with :data:`TEMP_MARKER` under ``prefix`` (``""``: the whole root)."""
        base = self._path(prefix) if prefix else self.root
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in files:
                if not name.startswith(TEMP_MARKER):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield (name if rel == "." else f"{rel}/{name}"), st.st_size, st.st_mtime

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _translate(exc, key) from exc
