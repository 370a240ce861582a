"""The repository: config, blob store (packs + index), restore points.

Object layout under the repository URL::

    config                          format version and parameters (JSON)
    packs/<2 hex>/<64 hex>          pack files (see pack.py)
    index/<64 hex>.parquet          index files (see index.py)
    manifests/<64 hex>.parquet      restore points (see manifest.py)

Reading is lock-free: every object is immutable once published.  Writers never modify or delete
an existing object.  Only prune (see maintenance) deletes, and only what no manifest references
and what is older than its grace period.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from vmkeep.storage.backend import Backend, open_backend
from vmkeep.storage.codec import BlobCodec, ChunkHasher
from vmkeep.storage.config import CONFIG_KEY, DEFAULT_IMAGE_CHUNK, RepoConfig
from vmkeep.storage.errors import (
    AmbiguousPoint,
    BlobMissing,
    DataCorrupt,
    ObjectNotFound,
    PasswordRequired,
    PointNotFound,
    RepositoryExists,
    RepositoryNotFound,
)
from vmkeep.storage.index import MasterIndex, decode_index
from vmkeep.storage.locks import Lock
from vmkeep.storage.manifest import RestorePoint, decode_point, encode_point, point_key, read_header
from vmkeep.storage.pack import pack_id_from_key, pack_key
from vmkeep.storage.writer import WriteSession

if TYPE_CHECKING:
    from vmkeep.storage.crypto import MasterKey, ObjectCipher

Password = str | Callable[[], str | None] | None


@dataclass(frozen=True)
class PointSummary:
    """What ``list`` shows without decoding chunk tables."""

    id: str
    name: str
    kind: str
    time: datetime
    parent: str | None
    disks: list[dict[str, Any]]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "short_id": self.id[:8],
            "name": self.name,
            "kind": self.kind,
            "time": self.time.isoformat(),
            "parent": self.parent,
            "disks": self.disks,
        }


class Repository:
    """An opened repository.  Cheap to open; the index is loaded on first use."""

    def __init__(
        self, backend: Backend, config: RepoConfig, master: MasterKey | None = None
    ) -> None:
        #: The target as is (key files, config); ``backend`` encrypts on top of it if needed.
        self.raw_backend = backend
        self.backend = backend
        self.config = config
        #: Encrypts blob payloads and pack trailers (None: an unencrypted repository).
        self.cipher: ObjectCipher | None = None
        self.key_id: str | None = None
        self.master = master
        if master is not None:
            from vmkeep.storage.crypto import CipherBackend, ObjectCipher

            self.cipher = ObjectCipher(master.encrypt)
            self.backend = CipherBackend(backend, self.cipher)
            self.hasher = ChunkHasher(master.hash_key)
        else:
            self.hasher = ChunkHasher(bytes.fromhex(config.hash_key))
        self.codec = BlobCodec(config.compression_level)
        self._index: MasterIndex | None = None
        self.missing_packs: set[bytes] = set()

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        url: str,
        storage_options: dict[str, Any] | None = None,
        image_chunk_size: int = DEFAULT_IMAGE_CHUNK,
        compression_level: int = 1,
        pack_size: int | None = None,
        password: str | None = None,
    ) -> Repository:
        """Create a repository; with ``password`` it is encrypted (first key file written
        before ``config``, so a crash never leaves an encrypted config without a key)."""
        backend = open_backend(url, storage_options)
        if backend.exists(CONFIG_KEY):
            raise RepositoryExists(backend.location)
        config = RepoConfig.new(image_chunk_size, compression_level)
        if pack_size:
            config.pack_size = pack_size
        master, key = None, ""
        if password is not None:
            from vmkeep.storage.crypto import MasterKey, wrap_key

            master = MasterKey.new()
            config.encryption, config.hash_key = "aes-256-gcm", ""
            key, body = wrap_key(master, password)
            backend.put(key, body)
        backend.put(CONFIG_KEY, config.encode())
        repo = cls(backend, config, master)
        if master is not None:
            repo.key_id = key.rsplit("/", 1)[-1]
        return repo

    @classmethod
    def open(
        cls,
        url: str,
        storage_options: dict[str, Any] | None = None,
        password: Password = None,
    ) -> Repository:
        """Open a repository.  ``password`` (a string or a callable returning one) is used only
        for an encrypted repository; by default it comes from the environment
        (``VMKEEP_PASSWORD``, ``VMKEEP_PASSWORD_FILE``, ``VMKEEP_PASSWORD_COMMAND``)."""
        backend = open_backend(url, storage_options)
        return cls.from_backend(backend, password)

    @classmethod
    def from_backend(cls, backend: Backend, password: Password = None) -> Repository:
        try:
            data = backend.get(CONFIG_KEY)
        except ObjectNotFound:
            raise RepositoryNotFound(backend.location) from None
        config = RepoConfig.decode(data)
        if not config.encrypted:
            return cls(backend, config)
        from vmkeep.storage.crypto import open_master_key, password_from_env

        secret = password() if callable(password) else password
        if secret is None:
            secret = password_from_env()
        if secret is None:
            raise PasswordRequired(backend.location)
        key_id, master = open_master_key(backend, secret)
        repo = cls(backend, config, master)
        repo.key_id = key_id
        return repo

    # -- index ---------------------------------------------------------------------------------
    @property
    def index(self) -> MasterIndex:
        if self._index is None:
            self.load_index()
        assert self._index is not None
        return self._index

    def load_index(self) -> MasterIndex:
        """Read every index file; blobs whose pack is gone are left out, so backups re-store
        them (healing restore points that reference them)."""
        index = MasterIndex()
        for key, _size in self.backend.list("index"):
            index.add_table(decode_index(self.backend.get(key), key))
        present = {pack_id_from_key(k) for k, _ in self.backend.list("packs")}
        self.missing_packs = index.packs() - present
        index.forget_packs(self.missing_packs)
        self._index = index
        return index

    # -- blobs ---------------------------------------------------------------------------------
    def read_blob(self, blob_id: bytes) -> bytes:
        """Fetch, decode and authenticate one chunk.  Raises ``BlobMissing`` / ``DataCorrupt``."""
        loc = self.index.get(blob_id)
        if loc is None:
            raise BlobMissing(blob_id.hex()[:16], "unknown")
        key = pack_key(loc.pack_id)
        try:
            payload = self.backend.get(key, loc.offset, loc.stored_length)
        except ObjectNotFound:
            raise BlobMissing(blob_id.hex()[:16], loc.pack_id.hex()[:16]) from None
        if len(payload) != loc.stored_length:
            raise DataCorrupt(key, f"pack truncated at offset {loc.offset}")
        return self.decode_payload(blob_id, loc.codec, payload, loc.raw_length, key)

    def encode_payload(self, blob_id: bytes, codec: int, payload: bytes) -> bytes:
        """The stored form of an encoded blob: encrypted (bound to its id) when the repository
        is encrypted, else ``payload`` itself."""
        if self.cipher is None:
            return payload
        return self.cipher.seal_blob(blob_id, payload)

    def decode_payload(
        self, blob_id: bytes, codec: int, stored: bytes, raw_length: int, where: str
    ) -> bytes:
        """Decrypt (if encrypted), decode and authenticate one stored blob; ``DataCorrupt``."""
        payload = stored if self.cipher is None else self.cipher.open_blob(blob_id, stored, where)
        raw = self.codec.decode(codec, payload, raw_length, where)
        if self.hasher.chunk_id(raw) != blob_id:
            raise DataCorrupt(where, f"chunk {blob_id.hex()[:16]} fails its hash check")
        return raw

    # -- locks ---------------------------------------------------------------------------------
    def lock(self, kind: str = "shared", **kw: Any) -> Lock:
        """Take a repository lock (a context manager); see :mod:`vmkeep.storage.locks`.

        Backups: ``with repo.lock("shared"):`` around everything from reading the index to
        writing the manifest.  Prune: ``"exclusive"``.  Raises ``RepositoryLocked`` (exit 11).
        """
        from vmkeep.storage.locks import acquire

        return acquire(self.backend, kind, **kw)

    def write_session(self) -> WriteSession:
        return WriteSession(self)

    # -- restore points ------------------------------------------------------------------------
    def save_point(self, point: RestorePoint) -> str:
        """Publish a restore point (atomic).  Call only after its session committed."""
        if not point.hostname:
            point.hostname = socket.gethostname()
        point_id, data = encode_point(point)
        self.backend.put(point_key(point_id), data)
        point.id = point_id
        return point_id

    def point_ids(self) -> list[str]:
        ids = []
        for key, _ in self.backend.list("manifests"):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".parquet"):
                ids.append(name.removesuffix(".parquet"))
        return ids

    def summaries(self) -> Iterator[PointSummary]:
        for point_id in self.point_ids():
            key = point_key(point_id)
            header = read_header(self.backend.get(key), key)
            yield PointSummary(
                point_id,
                header["name"],
                header["kind"],
                datetime.fromisoformat(header["time"]),
                header.get("parent"),
                header["disks"],
                header.get("meta") or {},
            )

    def list_points(self, name: str | None = None) -> list[PointSummary]:
        points = [s for s in self.summaries() if name is None or s.name == name]
        return sorted(points, key=lambda s: (s.time, s.id))

    def resolve(self, ref: str) -> str:
        """Resolve an id, unique id prefix, ``latest`` or ``NAME@latest`` to a full id."""
        if ref == "latest" or ref.endswith("@latest"):
            name = None if ref == "latest" else ref.removesuffix("@latest")
            points = self.list_points(name)
            if not points:
                raise PointNotFound(ref)
            return points[-1].id
        matches = [i for i in self.point_ids() if i.startswith(ref.lower())]
        if not matches:
            raise PointNotFound(ref)
        if len(matches) > 1:
            raise AmbiguousPoint(ref, ", ".join(m[:12] for m in matches[:5]))
        return matches[0]

    def load_point(self, ref: str) -> RestorePoint:
        point_id = self.resolve(ref)
        key = point_key(point_id)
        try:
            data = self.backend.get(key)
        except ObjectNotFound:
            raise PointNotFound(ref) from None
        if blake3(data).hexdigest() != point_id:
            raise DataCorrupt(key, "manifest content does not match its name")
        return decode_point(data, point_id)

    def latest_point(self, name: str, kind: str | None = None) -> RestorePoint | None:
        points = [p for p in self.list_points(name) if kind is None or p.kind == kind]
        return self.load_point(points[-1].id) if points else None
