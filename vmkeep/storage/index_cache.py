"""A local cache of a repository's merged index, so quick verbs do not read every index file.

``ls`` and a one-file ``restore files`` need the whole index (any chunk may sit in any pack);
reading and decoding one Parquet file per backup costs more than the rest of such a command.
The cache keeps the union of the index files' rows in one local file, keyed by the set of index
file names, like restic's local cache.

Location: ``$VMKEEP_CACHE_DIR`` if set, else ``$VMKEEP_STATE_DIR/cache`` if that is set (tests
and the benchmark keep everything in one directory), else ``$XDG_CACHE_HOME/vmkeep``, else
``~/.cache/vmkeep``; one file per repository: ``<dir>/<repository id>/index.cache``.
``vmkeep --no-cache`` or ``VMKEEP_NO_CACHE=1`` turns it off (nothing read, nothing written).

Format (version 2; version 1 caches are ignored and rebuilt)::

    body     Arrow IPC file: the index files' rows (:data:`vmkeep.storage.index.SCHEMA`, the eight
             columns of index version 2 — rows of version-1 index files with zero unit
             columns — in the order of the sorted file names), schema metadata b"vmkeep" =
             {"format": "vmkeep-index-cache", "version": 2, "index_set": <hex>,
              "files": [[<index file name>, <rows>], ...]}   (sorted by name; rows sum to
                                                              the table's length)
    unencrypted repository: body ‖ MAC (32 bytes) ‖ b"VMKCACH1"
             MAC = keyed BLAKE3 of the body, key derived (context "vmkeep index cache v1") from
             the repository's hash key
    encrypted repository:   AES-256-GCM seal of the body with the repository's key, associated
             data b"vmkeep-index-cache:<repository id>" (index metadata never lies on local
             disk in clear)

``index_set`` is the BLAKE3 of the sorted index file names joined by newlines.  Index files are
immutable and named by the hash of their content, so the set of names determines the rows; a
backup adds a name, prune replaces names, and either changes ``index_set``.  A stale but
authentic cache still saves work: the rows of each file it lists that is still listed are
reused (``files`` says which rows came from which file), and only new files are read.

The cache is untrusted: it is used only when its MAC (or seal) is valid for this repository's key
and its ``index_set`` equals that of the index files listed now.  Anything else — a corrupt,
truncated, foreign or stale file, another format version — is ignored and the cache rebuilt from
the index files.  A cache that cannot be written (read-only home) is skipped silently.  In an
unencrypted repository the MAC key derives from ``config`` (readable by anyone who can read the
repository): the MAC catches corruption and foreign files, not a forger — the same bar as the
repository itself.  Chunks
read through a cached location are still authenticated by their id, as always.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from blake3 import blake3

if TYPE_CHECKING:
    import pyarrow as pa

    from vmkeep.storage.crypto import ObjectCipher

log = logging.getLogger(__name__)

CACHE_FORMAT = "vmkeep-index-cache"
#: 2: the eight columns of index version 2 (compression units); 1 had six.
CACHE_VERSION = 2
MAGIC = b"VMKCACH1"
MAC_SIZE = 32
FILE_NAME = "index.cache"
#: A repository id fit to name a folder (``config`` is repository content: never trust it).
_REPO_ID = re.compile(r"[0-9a-f]{8,64}")


def open_cache(
    repo_id: str, hash_key: bytes, cipher: ObjectCipher | None
) -> IndexCache | None:
    """The cache of repository ``repo_id``, or ``None`` (caching off, no home, or an id that
    is not a plain hex name)."""
    root = cache_root()
    if root is None or not _REPO_ID.fullmatch(repo_id):
        return None
    return IndexCache(root, repo_id, hash_key, cipher)


def cache_root() -> Path | None:
    """The cache directory for every repository, or ``None`` when caching is off."""
    if os.environ.get("VMKEEP_NO_CACHE", "") not in ("", "0"):
        return None
    explicit = os.environ.get("VMKEEP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    state = os.environ.get("VMKEEP_STATE_DIR")
    if state:
        return Path(state) / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "vmkeep"
    try:
        return Path.home() / ".cache" / "vmkeep"
    except RuntimeError:  # no HOME and no passwd entry
        return None


def index_set(names: Iterable[str]) -> str:
    """The key of a set of index file names (order does not matter)."""
    return blake3("\n".join(sorted(names)).encode()).hexdigest()


@dataclass(frozen=True)
class Cached:
    """An authentic cache: its rows, the index set they are for, and each file's rows."""

    table: pa.Table
    index_set: str
    files: dict[str, tuple[int, int]]  # name -> (first row, row count)

    def rows_of(self, name: str) -> pa.Table | None:
        """The rows of index file ``name``, if this cache holds them."""
        span = self.files.get(name)
        return None if span is None else self.table.slice(*span)


class IndexCache:
    """The cache file of one repository.  ``hash_key``: the repository's chunk hash key (the MAC
    key is derived from it); ``cipher``: the repository's cipher for an encrypted one."""

    def __init__(
        self, root: Path, repo_id: str, hash_key: bytes, cipher: ObjectCipher | None
    ) -> None:
        self.path = root / repo_id / FILE_NAME
        self.repo_id = repo_id
        self._mac_key = blake3(hash_key, derive_key_context="vmkeep index cache v1").digest()
        self._cipher = cipher

    @property
    def _ad(self) -> bytes:
        return f"vmkeep-index-cache:{self.repo_id}".encode()

    def load(self, key: str) -> pa.Table | None:
        """The cached rows for index set ``key``, or ``None`` (no cache, stale, corrupt)."""
        cached = self.load_any()
        return cached.table if cached is not None and cached.index_set == key else None

    def load_any(self) -> Cached | None:
        """The cache if it is authentic and well-formed, whatever index set it is for."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        body = self._open(data)
        if body is None:
            log.info("index cache %s is corrupt or foreign: rebuilding it", self.path)
            return None
        import pyarrow as pa

        try:
            # on the calling thread: no Arrow worker may hold a Python buffer at exit
            # (tests/cli/test_exit_clean.py)
            options = pa.ipc.IpcReadOptions(use_threads=False)
            table = pa.ipc.open_file(pa.py_buffer(body), options=options).read_all()
            meta = json.loads((table.schema.metadata or {}).get(b"vmkeep", b"{}"))
            if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
                return None
            files, row = {}, 0
            for name, count in meta["files"]:
                files[str(name)] = (row, int(count))
                row += int(count)
            key = str(meta["index_set"])
        except (pa.ArrowException, OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # authentic yet unreadable: another pyarrow or vmkeep wrote it
        from vmkeep.storage.index import index_schema

        if row != table.num_rows or key != index_set(files):
            return None
        if not table.schema.remove_metadata().equals(index_schema().remove_metadata()):
            return None
        return Cached(table.replace_schema_metadata(None), key, files)

    def store(self, table: pa.Table, files: list[tuple[str, int]]) -> None:
        """Write ``table``, the rows of the index files ``files`` (name, row count) in that
        order (atomically: temporary file, then rename)."""
        import pyarrow as pa

        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "index_set": index_set(name for name, _ in files),
            "files": [[name, count] for name, count in files],
        }
        table = table.replace_schema_metadata({b"vmkeep": json.dumps(meta).encode()})
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(use_threads=False)
        with pa.ipc.new_file(sink, table.schema, options=options) as writer:
            writer.write_table(table)
        body = sink.getvalue().to_pybytes()
        data = self._seal(body)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.info("cannot write the index cache %s: %s", self.path, exc)

    def _seal(self, body: bytes) -> bytes:
        if self._cipher is not None:
            return self._cipher.seal(body, self._ad)
        return body + blake3(body, key=self._mac_key).digest() + MAGIC

    def _open(self, data: bytes) -> bytes | None:
        if self._cipher is not None:
            from vmkeep.storage.errors import DataCorrupt

            try:
                return self._cipher.open(data, self._ad, str(self.path))
            except DataCorrupt:
                return None
        if len(data) < MAC_SIZE + len(MAGIC) or not data.endswith(MAGIC):
            return None
        body, mac = data[: -MAC_SIZE - len(MAGIC)], data[-MAC_SIZE - len(MAGIC) : -len(MAGIC)]
        if blake3(body, key=self._mac_key).digest() != mac:
            return None
        return body
