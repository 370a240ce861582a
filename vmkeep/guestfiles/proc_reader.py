"""Reading, hashing and compressing small local files in worker *processes* (first backups).

Threads share one GIL, and keyed BLAKE3 of a small file, its zstd attempt and the per-file Python
around them mostly hold it: a first backup of many small files then runs at about one core.  For
a plain :class:`~vmkeep.guestfiles.local.LocalSource` the data path hands batches of small files
to :class:`ProcessReader` instead, which reads and encodes them in child interpreters
(``python -m vmkeep.guestfiles.proc_reader``: no fork of a threaded parent, and unlike
:mod:`multiprocessing` never a re-import of the caller's main script; children import only this
light module) speaking pickles over their stdin/stdout, and returns the same per-file results as
the thread worker: ``(blobs, bytes read, changed-while-read, error, xattrs)``, every
blob with its payload (the parent's write session still decides what is new, encrypts and
packs).  Identical behaviour, files and errors included; only where the work runs differs.

This module must stay light (no pyarrow, no Prefect): forkserver children import it.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any, BinaryIO

from vmkeep.storage.cdc import Chunker
from vmkeep.storage.codec import BlobCodec, ChunkHasher

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
NOATIME = getattr(os, "O_NOATIME", 0)

#: ``(host path, size, mtime_ns, ctime_ns, want xattrs)`` of one file to read.
Item = tuple[bytes, int, int, int | None, bool]
_state: dict[str, Any] = {}


def fd_xattrs(fd: int) -> list[tuple[bytes, bytes]]:
    """Extended attributes of an open file, sorted (``[]`` when unsupported or unreadable)."""
    try:
        return sorted((os.fsencode(n), os.getxattr(fd, n)) for n in os.listxattr(fd))
    except OSError:
        return []


def open_file(path: bytes, noatime: int) -> int:
    """``open`` as :meth:`LocalSource.open`: ``O_NOFOLLOW``, ``O_NOATIME`` where permitted."""
    try:
        return os.open(path, _OPEN | noatime)
    except PermissionError:
        if not noatime:
            raise
        return os.open(path, _OPEN)  # O_NOATIME needs ownership; retry without


def changed(size: int, mtime_ns: int, ctime_ns: int | None, st: os.stat_result,
            nread: int) -> str | None:
    """Why a file read as ``nread`` bytes changed since the walk (``fstat`` after reading)."""
    if nread != size or st.st_size != size:
        return f"size {size} at walk, {st.st_size} now, {nread} read"
    if st.st_mtime_ns != mtime_ns or st.st_ctime_ns != ctime_ns:
        return "modified while read"
    return None


def read_fd(fd: int, size: int) -> bytes:
    """The whole content of an open file whose walk size was ``size`` (reads to EOF)."""
    data = os.read(fd, size + 1)
    if data:
        more = os.read(fd, 1 << 20)
        if more:
            parts = [data, more]
            while more:
                more = os.read(fd, 1 << 20)
                parts.append(more)
            data = b"".join(parts)
    return data


def _init(key: bytes, level: int, cdc: dict[str, int], noatime: int) -> None:
    _state.update(hasher=ChunkHasher(key), codec=BlobCodec(level), cdc=cdc, noatime=noatime)


def read_batch(items: list[Item]) -> list[tuple[list[Any], int, str | None, str, Any]]:
    """Process side: read, cut, hash and compress each file (see the module docstring)."""
    hasher, codec, cdc = _state["hasher"], _state["codec"], _state["cdc"]
    chunker: Chunker | None = None
    out: list[tuple[list[Any], int, str | None, str, Any]] = []
    for path, size, mtime_ns, ctime_ns, want_x in items:
        xattrs = None
        try:
            fd = open_file(path, _state["noatime"])
            try:
                xattrs = fd_xattrs(fd) if want_x else None
                data = read_fd(fd, size)
                why = changed(size, mtime_ns, ctime_ns, os.fstat(fd), len(data))
            finally:
                os.close(fd)
        except OSError as exc:
            out.append(([], 0, None, str(exc) or type(exc).__name__, xattrs))
            continue
        if len(data) <= cdc["min"]:
            views: list[Any] = [data] if data else []
        else:
            chunker = chunker or Chunker.from_config(cdc)
            views = list(chunker.cut(data))
        blobs = []
        for view in views:
            enc, payload = codec.encode(view)
            blobs.append((hasher.chunk_id(view), enc, payload, len(view)))
        out.append((blobs, len(data), why, "", xattrs))
    return out


class ProcessReader:
    """Reader child processes for one backup run; :meth:`close` when done.

    :meth:`submit` returns a future of :func:`read_batch`'s result; batches go round-robin to the
    children, each served in order by one feeder thread.  A child that dies fails the futures
    of its batches (``ChildProcessError``): the backup fails, it never silently drops files.
    """

    def __init__(self, processes: int, key: bytes, level: int, cdc: dict[str, int],
                 noatime: int) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        self.queues: list[queue.SimpleQueue[tuple[list[Item], Future[Any]] | None]] = []
        self.threads: list[threading.Thread] = []
        self.next = 0
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for _ in range(processes):
            child = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=env,
            )
            assert child.stdin is not None
            pickle.dump((key, level, dict(cdc), noatime), child.stdin, protocol=5)
            child.stdin.flush()
            jobs: queue.SimpleQueue[tuple[list[Item], Future[Any]] | None] = queue.SimpleQueue()
            thread = threading.Thread(target=self._feed, args=(child, jobs), daemon=True,
                                      name="vmkeep-proc-reader")
            thread.start()
            self.children.append(child)
            self.queues.append(jobs)
            self.threads.append(thread)

    @staticmethod
    def _feed(child: subprocess.Popen[bytes],
              jobs: queue.SimpleQueue[tuple[list[Item], Future[Any]] | None]) -> None:
        assert child.stdin is not None and child.stdout is not None
        broken: BaseException | None = None
        while (job := jobs.get()) is not None:
            items, future = job
            if not future.set_running_or_notify_cancel():
                continue
            if broken is None:
                try:
                    pickle.dump(items, child.stdin, protocol=5)
                    child.stdin.flush()
                    future.set_result(pickle.load(child.stdout))
                    continue
                except (OSError, EOFError, pickle.UnpicklingError) as exc:
                    broken = ChildProcessError(f"file reader process failed: {exc}")
            future.set_exception(broken)

    def submit(self, items: list[Item]) -> Future[Any]:
        future: Future[Any] = Future()
        self.queues[self.next].put((items, future))
        self.next = (self.next + 1) % len(self.queues)
        return future

    def close(self) -> None:
        for jobs in self.queues:
            jobs.put(None)
        for thread in self.threads:
            thread.join()
        for child in self.children:
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: an init tuple, then one batch in, one result out, until EOF."""
    _init(*pickle.load(stdin))
    while True:
        try:
            items = pickle.load(stdin)
        except EOFError:
            return
        pickle.dump(read_batch(items), stdout, protocol=5)
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
