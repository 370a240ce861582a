"""The repository: config, blob store (packs + index), restore points.

Object layout under the repository URL::

    config                          format version and parameters (JSON)
    config.sealed                   encrypted repositories: ``config`` sealed with the master key
    packs/<2 hex>/<64 hex>          pack files (see pack.py)
    index/<64 hex>.parquet          index files (see index.py)
    manifests/<64 hex>.parquet      restore points (see manifest.py)
    forgotten/<64 hex>              tombstones of forgotten restore points (see forget.py)

Every object is immutable once published.  Writers never modify or delete an existing object.
Only prune deletes (see :mod:`vmkeep.storage.gc`): what no manifest references, older than its
grace period, and only once no **lease** older than the moment the data left the index is live.
Loading the index therefore takes a reader lease (``locks/``, kind ``read``) unless this object
already holds a lock; it is refreshed in the background and released by :meth:`close` (or when
the object is collected, or at exit).  A repository that cannot be written (read-only media)
is read without a lease, with a warning: prune cannot run there either.

Rollback: listing the restore points (:meth:`Repository.point_ids`, under ``list_points``,
``resolve``, ``latest_point``, prune and check) compares them with what this client saw before
(:mod:`vmkeep.storage.known_state`) and raises ``RepositoryRolledBack`` when a point vanished
without a ``forget`` tombstone or ``config`` changed.  An encrypted repository's ``config`` must
equal ``config.sealed`` byte for byte (authenticated: ``DataCorrupt`` otherwise), and a config
without encryption beside key files is refused (``EncryptionDowngrade``).
"""

from __future__ import annotations

import logging
import socket
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from vmkeep.retry import RetryPolicy
from vmkeep.storage import crash_points, locks
from vmkeep.storage.backend import TEMP_MARKER, Backend, open_backend
from vmkeep.storage.codec import CODEC_RECIPE, ZERO_ID, BlobCodec, ChunkHasher, decode_recipe
from vmkeep.storage.config import (
    CONFIG_KEY,
    DEFAULT_IMAGE_CDC,
    DEFAULT_IMAGE_CHUNK,
    MAX_PACK_SIZE,
    RepoConfig,
)
from vmkeep.storage.errors import (
    AmbiguousPoint,
    BlobMissing,
    DataCorrupt,
    EncryptionDowngrade,
    LocationNotEmpty,
    ObjectNotFound,
    PasswordRequired,
    PointNotFound,
    RepositoryExists,
    RepositoryLocked,
    RepositoryNotFound,
    RepositoryRolledBack,
    StorageError,
)
from vmkeep.storage.index import BlobLocation, MasterIndex, read_index
from vmkeep.storage.known_state import KnownState, StateRecord
from vmkeep.storage.locks import EXCLUSIVE, LOCK_PREFIX, READ, Lock
from vmkeep.storage.manifest import RestorePoint, decode_point, encode_point, point_key, read_header
from vmkeep.storage.pack import list_packs, pack_id_from_key, pack_key
from vmkeep.storage.writer import WriteSession

if TYPE_CHECKING:
    import pyarrow as pa

    from vmkeep.storage.crypto import MasterKey, ObjectCipher
    from vmkeep.storage.index_cache import IndexCache

log = logging.getLogger(__name__)
Password = str | Callable[[], str | None] | None
#: ``config`` sealed with the master key (an encrypted object: ad binds this name).
CONFIG_SEALED_KEY = "config.sealed"
#: re-reading the index when a listed index file vanished (a concurrent prune rewrote it)
INDEX_RELIST = RetryPolicy(retries=4, delay_s=0.0)
#: ``crypto.KEY_PREFIX`` (not imported here: cryptography loads for encrypted repositories only).
KEY_PREFIX = "keys"
#: What an ``init`` interrupted before its ``config`` leaves behind (it may be run again), and
#: the lock of one still running.
LEFT_BY_INIT = frozenset({KEY_PREFIX, CONFIG_SEALED_KEY, LOCK_PREFIX})
#: The lock command of ``init``; how long one waits for another init of the same location.
INIT_COMMAND, INIT_WAIT = "init", 60.0


def _refuse_taken(backend: Backend) -> None:
    """Raise unless ``backend``'s location may take a new repository: none there yet, and
    nothing but what an interrupted or running init leaves (see :data:`LEFT_BY_INIT`)."""
    if backend.exists(CONFIG_KEY):
        raise RepositoryExists(backend.location)
    others = [n for n in backend.top_level_names() or []
              if n not in LEFT_BY_INIT and not n.startswith(TEMP_MARKER)]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3
                                         else "")
        raise LocationNotEmpty(backend.location, shown)


def _remove_killed_inits(backend: Backend) -> None:
    """Delete the locks of inits whose process is gone from this host, or that turned stale:
    no repository exists yet, so nothing else could clear them (``unlock`` needs one)."""
    for info in locks.list_locks(backend):
        if info.command == INIT_COMMAND and (info.owner_gone() or info.is_stale()):
            backend.delete(info.key)


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
            "consistency": self.meta.get("consistency"),
            "cbt_suspect": [d.get("index") for d in self.disks if d.get("cbt_suspect")],
        }


@dataclass(frozen=True)
class DamagedPoint:
    """A manifest ``list`` could not use, and why."""

    id: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "short_id": self.id[:8], "damaged": True, "reason": self.reason}


class Repository:
    """An opened repository.  Cheap to open; the index is loaded on first use."""

    def __init__(
        self,
        backend: Backend,
        config: RepoConfig,
        master: MasterKey | None = None,
        config_bytes: bytes | None = None,
    ) -> None:
        #: The target as is (key files, config); ``backend`` encrypts on top of it if needed.
        self.raw_backend = backend
        self.backend = backend
        self.config = config
        #: ``config`` exactly as stored (its BLAKE3 is what clients remember).
        self.config_bytes = config.encode() if config_bytes is None else config_bytes
        #: This client's record of the repository (rollback detection).
        self.known = KnownState(config.id, backend.location)
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
        #: every readable location, for chunks the index leaves out (read, never deduplicated)
        self._damaged = MasterIndex()
        #: validated manifest headers by point id, read once per object (manifests are immutable)
        self._headers: dict[str, PointSummary] = {}
        #: Locks this object took (see :meth:`lock`); the live ones protect its index view.
        self._locks: list[Lock] = []
        self._read_lease: Lock | None = None

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
        image_cdc: dict[str, int] | None = DEFAULT_IMAGE_CDC,
        version: int | None = None,
    ) -> Repository:
        """Create a repository; with ``password`` it is encrypted (first key file written
        before ``config``, so a crash never leaves an encrypted config without a key).
        ``image_cdc=None``: a version-1 repository whose image frames are stored whole;
        ``version``: an explicit older format (see :meth:`RepoConfig.new`).

        Exclusive: init writes under an ``exclusive`` lock (plaintext, removed when done) and
        checks the location again once it holds it, so of inits racing for one location one
        creates the repository and the others raise :class:`RepositoryExists` having written
        nothing (:data:`INIT_WAIT` bounds the wait, then :class:`RepositoryLocked`).  The lock
        of an init that was killed (its process gone from this host) is removed."""
        config = RepoConfig.new(image_chunk_size, compression_level, image_cdc, version)
        if pack_size is not None:
            if not 0 < pack_size <= MAX_PACK_SIZE:
                raise ValueError(f"pack size must be between 1 byte and {MAX_PACK_SIZE >> 20} "
                                 f"MiB, not {pack_size} bytes")
            config.pack_size = pack_size
        backend = open_backend(url, storage_options)
        _refuse_taken(backend)
        _remove_killed_inits(backend)
        with locks.locked(backend, EXCLUSIVE, wait=INIT_WAIT, command=INIT_COMMAND):
            _refuse_taken(backend)  # another init may have won while this one waited
            return cls._create(backend, config, password)

    @classmethod
    def _create(cls, backend: Backend, config: RepoConfig, password: str | None) -> Repository:
        """The writes of :meth:`init` (which holds the location)."""
        master, key = None, ""
        if password is not None:
            from vmkeep.storage.crypto import MasterKey, wrap_key

            master = MasterKey.new()
            config.encryption, config.hash_key = "aes-256-gcm", ""
            key, body = wrap_key(master, password)
            backend.put(key, body)
        data = config.encode()
        repo = cls(backend, config, master, data)
        if master is not None:
            repo.key_id = key.rsplit("/", 1)[-1]
            repo.backend.put(CONFIG_SEALED_KEY, data)  # before config: never one without it
        backend.put(CONFIG_KEY, data)
        repo.known.update(repo.config_hash, replace=True)  # a new id: nothing seen yet
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
            if any(True for _ in backend.list(KEY_PREFIX)):
                raise EncryptionDowngrade(backend.location)
            return cls(backend, config, config_bytes=data)
        from vmkeep.storage.crypto import open_master_key, password_from_env

        secret = password() if callable(password) else password
        if secret is None:
            secret = password_from_env()
        if secret is None:
            raise PasswordRequired(backend.location)
        def belongs(master: MasterKey) -> bool:
            """Whether ``master`` authenticates this repository's ``config.sealed`` (another
            repository's key does not; a missing one is reported by the check below)."""
            from vmkeep.storage.crypto import CipherBackend, ObjectCipher

            try:
                CipherBackend(backend, ObjectCipher(master.encrypt)).get(CONFIG_SEALED_KEY)
            except ObjectNotFound:
                return True
            except DataCorrupt:
                return False
            return True

        key_id, master = open_master_key(backend, secret, belongs)
        repo = cls(backend, config, master, data)
        repo.key_id = key_id
        repo.verify_sealed_config()
        return repo

    def verify_sealed_config(self) -> None:
        """An encrypted repository's ``config`` must equal ``config.sealed`` (authenticated with
        the master key) byte for byte; ``DataCorrupt`` otherwise."""
        try:
            sealed = self.backend.get(CONFIG_SEALED_KEY)
        except ObjectNotFound:
            raise DataCorrupt(CONFIG_KEY, f"{CONFIG_SEALED_KEY} is missing") from None
        if sealed != self.config_bytes:
            raise DataCorrupt(CONFIG_KEY, f"config was modified (differs from {CONFIG_SEALED_KEY})")

    # -- index ---------------------------------------------------------------------------------
    @property
    def index(self) -> MasterIndex:
        if self._index is None:
            self.load_index()
        assert self._index is not None
        return self._index

    def load_index(self) -> MasterIndex:
        """Read every index file (after taking a reader lease unless this object holds a lock,
        :meth:`ensure_lease`).  Left out, so that backups store those chunks again: locations in
        packs that are gone, in packs prune has condemned or unlisted (``gc/`` records, see
        :mod:`vmkeep.storage.gc`), and those ``check`` recorded as damaged
        (:mod:`vmkeep.storage.heal`).  Restores still read a chunk from a condemned or damaged
        location when it has no other (:meth:`locate`).  An index file that prune deleted between
        the listing and the read means prune rewrote the index: the load starts over (prune
        writes the new files before deleting the old)."""
        from vmkeep.storage.gc import load_records, recorded_packs
        from vmkeep.storage.heal import damaged_locations, load_damage

        self.ensure_lease()
        condemned = recorded_packs(load_records(self.backend))
        damaged = damaged_locations(load_damage(self.backend))
        index, aside = self._read_index(set(), condemned, damaged)
        present = {pack_id_from_key(k) for k, _ in list_packs(self.backend)}
        self.missing_packs = (index.packs() | aside.packs()) - present
        if self.missing_packs:  # rare (lost packs): read again without them
            index, aside = self._read_index(self.missing_packs, condemned, damaged)
        self._damaged = aside
        self._index = index
        return index

    def _read_index(
        self, missing: set[bytes], condemned: set[bytes], damaged: set[tuple[bytes, bytes]]
    ) -> tuple[MasterIndex, MasterIndex]:
        """The index without locations in ``missing`` or ``condemned`` packs or ``damaged``,
        and the locations set aside (condemned or damaged, in packs not missing)."""
        from vmkeep.storage.heal import set_aside_rows, usable_rows

        aside_packs = condemned - missing

        def read() -> tuple[MasterIndex, MasterIndex]:
            index, aside = MasterIndex(), MasterIndex()
            for table in self._index_tables():
                if not (missing or condemned or damaged):
                    index.add_table(table)
                    continue
                index.add_table(usable_rows(table, missing | condemned, damaged))
                if aside_packs or damaged:
                    aside.add_table(set_aside_rows(table, aside_packs, damaged))
            return index, aside

        # an index file listed, then removed by a concurrent prune's rewrite: list again
        return INDEX_RELIST.call(
            read, what="read the index", retryable=lambda e: isinstance(e, ObjectNotFound)
        )

    def _index_tables(self) -> Iterator[pa.Table]:
        """The rows of every index file: from the local cache (:mod:`vmkeep.storage.index_cache`)
        when it is valid for the index files listed now; else read from the repository — with
        caching on, only the files a stale cache does not hold, merged and cached again."""
        from vmkeep.storage.index_cache import index_set

        keys = [key for key, _size in self.backend.list("index")]
        cache = self.index_cache()
        if cache is None:
            for key in keys:
                yield read_index(self.backend, key)
            return
        import pyarrow as pa

        from vmkeep.storage.index import index_schema

        names = {k.rsplit("/", 1)[-1]: k for k in keys}
        cached = cache.load_any()
        if cached is not None and cached.index_set == index_set(names):
            yield cached.table
            return
        tables, files = [], []
        for name in sorted(names):  # rows of files the cache holds are reused, the rest read
            rows = cached.rows_of(name) if cached is not None else None
            if rows is None:
                rows = read_index(self.backend, names[name])
            tables.append(rows)
            files.append((name, rows.num_rows))
        merged = (
            pa.concat_tables(tables) if tables else index_schema().empty_table()
        ).combine_chunks()
        cache.store(merged, files)
        yield merged

    def index_cache(self) -> IndexCache | None:
        """This repository's local index cache, or ``None`` when caching is off."""
        from vmkeep.storage.index_cache import open_cache

        hash_key = self.master.hash_key if self.master else bytes.fromhex(self.config.hash_key)
        return open_cache(self.config.id, hash_key, self.cipher)

    @property
    def pack_version(self) -> int:
        """Pack format this repository writes: 3 (compression units) in a version-4 repository,
        2 (named by the contents table) in versions 2 and 3, 1 in a version-1 one (so older
        vmkeep still checks it)."""
        if self.config.version >= 4:
            return 3
        return 2 if self.config.version >= 2 else 1

    @property
    def index_version(self) -> int:
        """Index file version this repository writes (2 with units, else 1)."""
        from vmkeep.storage.index import index_version

        return index_version(self.config.version)

    # -- blobs ---------------------------------------------------------------------------------
    def locate(self, blob_id: bytes) -> BlobLocation | None:
        """Where to read a chunk: its index location, else one in a pack prune has condemned, or
        one ``check`` recorded as damaged (the read then fails with ``DataCorrupt`` unless the
        pack was repaired) — never used for deduplication."""
        loc = self.index.get(blob_id)
        return loc if loc is not None else self._damaged.get(blob_id)

    def read_blob(self, blob_id: bytes) -> bytes:
        """Fetch, decode and authenticate one chunk.  Raises ``BlobMissing`` / ``DataCorrupt``."""
        loc = self.locate(blob_id)
        if loc is None:
            raise BlobMissing(blob_id.hex()[:16], "unknown")
        key = pack_key(loc.pack_id)
        try:
            payload = self.backend.get(key, loc.offset, loc.stored_length)
        except ObjectNotFound:
            raise BlobMissing(blob_id.hex()[:16], loc.pack_id.hex()[:16]) from None
        if len(payload) != loc.stored_length:
            raise DataCorrupt(key, f"pack truncated at offset {loc.offset}")
        raw = self.decode_located(blob_id, loc, payload, key)
        return raw if isinstance(raw, bytes) else bytes(raw)  # payload is bytes: never copies

    def encode_payload(
        self, blob_id: bytes, codec: int, payload: bytes | memoryview
    ) -> bytes | memoryview:
        """The stored form of an encoded blob: encrypted (bound to its id) when the repository
        is encrypted, else ``payload`` itself."""
        if self.cipher is None:
            return payload
        return self.cipher.seal_blob(blob_id, payload)

    def encode_unit_payload(self, unit_length: int, payload: bytes) -> bytes:
        """The stored form of a compression unit (version 4): sealed once as a whole in an
        encrypted repository, else ``payload`` itself."""
        if self.cipher is None:
            return payload
        return self.cipher.seal_unit(unit_length, payload)

    def decode_unit(
        self, stored: bytes | memoryview, unit_length: int, where: str, pieces: list[bytes]
    ) -> bytes:
        """Open (if encrypted) and decode a unit's payload to its ``unit_length`` bytes; the
        caller slices and authenticates the pieces (:meth:`unit_piece`).  ``UnitCorrupt``
        naming ``pieces`` (the ids the caller wants from it) when it does not decode."""
        from vmkeep.storage.errors import UnitCorrupt

        try:
            payload = (
                stored if self.cipher is None else self.cipher.open_unit(unit_length, stored, where)
            )
            return self.codec.decode_unit(payload, unit_length, where)
        except UnitCorrupt:
            raise
        except DataCorrupt as exc:
            raise UnitCorrupt(where, f"a unit does not decode ({exc.args[-1]})", pieces) from None

    def unit_piece(
        self, blob_id: bytes, unit: bytes, loc: BlobLocation, where: str
    ) -> memoryview:
        """Piece ``blob_id`` of a decoded ``unit`` at ``loc`` (codec 3), authenticated by its
        keyed id (a view of ``unit``, no copy).  ``DataCorrupt`` otherwise."""
        if loc.raw_length <= 0 or loc.unit_offset + loc.raw_length > len(unit):
            raise DataCorrupt(where, f"piece {blob_id.hex()[:16]} lies outside its unit")
        piece = memoryview(unit)[loc.unit_offset : loc.unit_offset + loc.raw_length]
        if self.hasher.chunk_id(piece) != blob_id:
            raise DataCorrupt(where, f"chunk {blob_id.hex()[:16]} fails its hash check")
        return piece

    def decode_located(
        self, blob_id: bytes, loc: BlobLocation, stored: bytes | memoryview, where: str
    ) -> bytes | memoryview:
        """:meth:`decode_payload` for a blob at ``loc`` whose stored payload is ``stored``,
        following compression units (codec 3: the unit is decoded, the piece sliced out)."""
        from vmkeep.storage.codec import CODEC_UNIT

        if loc.codec == CODEC_UNIT:
            unit = self.decode_unit(stored, loc.unit_length, where, [blob_id])
            return self.unit_piece(blob_id, unit, loc, where)
        return self.decode_payload(blob_id, loc.codec, stored, loc.raw_length, where)

    def decode_payload(
        self, blob_id: bytes, codec: int, stored: bytes | memoryview, raw_length: int, where: str
    ) -> bytes | memoryview:
        """Decrypt (if encrypted), decode and authenticate one stored blob; ``DataCorrupt``.
        A raw (codec 0) blob of an unencrypted repository is returned as given (a view stays
        a view)."""
        from vmkeep.storage.codec import CODEC_UNIT

        if codec == CODEC_UNIT:
            raise DataCorrupt(where, f"chunk {blob_id.hex()[:16]} lies in a unit: decode_located")
        payload = stored if self.cipher is None else self.cipher.open_blob(blob_id, stored, where)
        if codec == CODEC_RECIPE and self.config.recipe_ids:
            # version 5: the recipe is the frame's identity; each piece is authenticated as
            # it is fetched, so the joined frame needs no second hash
            self.check_recipe_id(blob_id, payload, where)
            return self._assemble(payload, raw_length, where)
        if codec == CODEC_RECIPE:
            raw: bytes | memoryview = self._assemble(payload, raw_length, where)
        else:
            raw = self.codec.decode(codec, payload, raw_length, where)
        if self.hasher.chunk_id(raw) != blob_id:
            raise DataCorrupt(where, f"chunk {blob_id.hex()[:16]} fails its hash check")
        return raw

    def open_recipe(
        self, blob_id: bytes, stored: bytes | memoryview, where: str
    ) -> bytes | memoryview:
        """The payload of the recipe blob ``blob_id`` as stored: decrypted (authenticated by the
        AEAD) in an encrypted repository, checked against its id in version 5
        (:meth:`check_recipe_id`).  ``DataCorrupt``."""
        payload = stored if self.cipher is None else self.cipher.open_blob(blob_id, stored, where)
        self.check_recipe_id(blob_id, payload, where)
        return payload

    def check_recipe_id(self, blob_id: bytes, recipe: bytes | memoryview, where: str) -> None:
        """``DataCorrupt`` unless ``recipe`` is the recipe of the frame ``blob_id`` (version 5:
        its id is the keyed hash of the recipe).  Older versions name frames by their bytes:
        the caller checks the joined frame instead."""
        if self.config.recipe_ids and self.hasher.recipe_id(recipe) != blob_id:
            raise DataCorrupt(where, f"chunk {blob_id.hex()[:16]} fails its hash check (recipe)")

    def _assemble(self, recipe: bytes | memoryview, raw_length: int, where: str) -> bytes:
        """Join the pieces a recipe lists (fetched with as few ranged reads as their packs
        allow; each piece authenticated).  The caller checks the frame's id (version 5: the
        recipe's, before).  ``BlobMissing``
        for a piece that is not stored, ``DataCorrupt`` for a piece that is itself a recipe."""
        from vmkeep.storage.spans import fetch_span, plan_spans

        pieces = decode_recipe(recipe, raw_length, where)
        out = bytearray(raw_length)
        starts, pos = [], 0
        for _, length in pieces:
            starts.append(pos)
            pos += length
        wanted = [(i, blob_id) for i, (blob_id, _) in enumerate(pieces) if blob_id != ZERO_ID]
        for blob_id in {b for _, b in wanted}:
            loc = self.locate(blob_id)
            if loc is not None and loc.codec == CODEC_RECIPE:
                raise DataCorrupt(where, f"piece {blob_id.hex()[:16]} is itself a recipe")
        for span in plan_spans(self, wanted):
            for i, data in fetch_span(self, span):
                if len(data) != pieces[i][1]:
                    raise DataCorrupt(where, f"piece {i} has the wrong length")
                out[starts[i] : starts[i] + len(data)] = data
        return bytes(out)

    def recipe_pieces(self, blob_id: bytes) -> list[bytes] | None:
        """The ids of the stored (non-zero) pieces of a recipe blob, or ``None`` when the blob
        is stored whole.  Reads only the recipe.  ``BlobMissing`` / ``DataCorrupt`` when the
        recipe cannot be read — a caller deciding what to keep must then keep everything."""
        loc = self.locate(blob_id)
        if loc is None or loc.codec != CODEC_RECIPE:
            return None
        key = pack_key(loc.pack_id)
        try:
            stored = self.backend.get(key, loc.offset, loc.stored_length)
        except ObjectNotFound:
            raise BlobMissing(blob_id.hex()[:16], loc.pack_id.hex()[:16]) from None
        if len(stored) != loc.stored_length:
            raise DataCorrupt(key, f"pack truncated at offset {loc.offset}")
        pieces = decode_recipe(self.open_recipe(blob_id, stored, key), loc.raw_length, key)
        return list(dict.fromkeys(b for b, _ in pieces if b != ZERO_ID))

    # -- locks ---------------------------------------------------------------------------------
    def lock(self, kind: str = "shared", **kw: Any) -> Lock:
        """Take a repository lock (a context manager); see :mod:`vmkeep.storage.locks`.

        Backups: ``with repo.lock("shared"):`` around everything from reading the index to
        writing the manifest.  Prune: ``"prune"``.  Key changes and upgrades: ``"exclusive"``
        (leases wait for it, bounded).  Raises ``RepositoryLocked`` (exit 11).
        """
        from vmkeep.storage.locks import acquire

        held = acquire(self.backend, kind, **kw)
        self._locks.append(held)
        return held

    def held_locks(self) -> list[Lock]:
        """The locks this object holds (not released, not lost)."""
        self._locks = [lk for lk in self._locks if not lk.released]
        return [lk for lk in self._locks if not lk.lost]

    def ensure_lease(self) -> Lock | None:
        """Take a reader lease unless this object already holds a lock; returns the lease held.
        A repository whose ``locks/`` cannot be written is read unprotected (logged)."""
        held = self.held_locks()
        if held:
            return held[0]
        try:
            lease = self.lock(READ, command="read")
        except RepositoryLocked:
            raise
        except (StorageError, OSError) as exc:
            log.warning("reading %s without a reader lease: %s", self.backend.location, exc)
            return None
        self._read_lease = lease
        finalizer = weakref.finalize(self, lease.release)
        finalizer.atexit = True
        return lease

    def close(self) -> None:
        """Release the reader lease (if any); the object may still be used (it takes a new one
        when it loads the index again)."""
        lease, self._read_lease = self._read_lease, None
        if lease is not None:
            lease.release()
        self._index = None

    def write_session(self) -> WriteSession:
        return WriteSession(self)

    # -- restore points ------------------------------------------------------------------------
    def save_point(self, point: RestorePoint) -> str:
        """Publish a restore point (atomic).  Call only after its session committed."""
        if not point.hostname:
            point.hostname = socket.gethostname()
        point_id, data = encode_point(point)
        self.backend.put(point_key(point_id), data)
        crash_points.reached("manifest")
        point.id = point_id
        self.known.update(self.config_hash, add=[point_id])
        return point_id

    def point_ids(self) -> list[str]:
        """Every restore point's id, checked against this client's record: raises
        ``RepositoryRolledBack`` when a point it saw is gone without a tombstone or ``config``
        changed (see :mod:`vmkeep.storage.known_state`)."""
        baseline = self.known.load()  # before listing: every id in it must be listed
        ids = self._list_point_ids()
        self._check_rollback(baseline, ids)
        return ids

    def _list_point_ids(self) -> list[str]:
        ids = []
        for key, _ in self.backend.list("manifests"):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".parquet"):
                ids.append(name.removesuffix(".parquet"))
        return ids

    # -- rollback detection --------------------------------------------------------------------
    @property
    def config_hash(self) -> str:
        return blake3(self.config_bytes).hexdigest()

    def _check_rollback(self, baseline: StateRecord | None, ids: list[str]) -> None:
        from vmkeep import clock
        from vmkeep.storage.known_state import LISTED_REFRESH

        present = set(ids)
        now = clock.now()
        if baseline is None:  # first use (trust it), or no state directory
            if self.known.enabled:
                self.known.update(self.config_hash, add=self._authentic(present), listed=now)
            return
        if baseline.config_blake3 != self.config_hash:
            raise RepositoryRolledBack(
                self.backend.location,
                "its config differs from the one this client saw before (BLAKE3 "
                f"{baseline.config_blake3[:16]}, now {self.config_hash[:16]}); "
                "if that is expected, run `vmkeep check --accept-rollback`",
            )
        missing = baseline.points - present
        gone: set[str] = set()
        if missing:
            from vmkeep.storage.forget import tombstoned

            gone = tombstoned(self.backend, missing)
            lost = sorted(missing - gone)
            if lost and _tombstones_may_have_expired(baseline, now):
                log.warning(
                    "%d restore point(s) this client saw are gone without a tombstone; it last "
                    "listed the repository on %s, longer ago than tombstones are kept: taken "
                    "as forgotten",
                    len(lost),
                    f"{baseline.listed:%Y-%m-%d}" if baseline.listed else "?",
                )
                gone |= set(lost)
                lost = []
            if lost:
                shown = ", ".join(i[:12] for i in lost[:10])
                more = f" and {len(lost) - 10} more" if len(lost) > 10 else ""
                raise RepositoryRolledBack(
                    self.backend.location,
                    f"{len(lost)} restore point(s) this client saw are gone and were not "
                    f"forgotten: {shown}{more}; if an older copy was restored on purpose, "
                    "run `vmkeep check --accept-rollback`",
                )
        new = self._authentic(present - baseline.points)
        stale = baseline.listed is None or now - baseline.listed >= LISTED_REFRESH
        if new or gone or stale:
            self.known.update(self.config_hash, add=new, remove=gone, listed=now)

    def _authentic(self, point_ids: Iterable[str]) -> set[str]:
        """The ids among ``point_ids`` whose manifest is genuine: it decrypts and authenticates
        (encrypted repositories), hashes to its name and has a valid header.  Only these enter
        the client's record, so a junk manifest seen once cannot make every later command
        report a rollback when it is removed.  Costs one read per point new to this client."""
        good = set()
        for point_id in point_ids:
            key = point_key(point_id)
            try:
                data = self.backend.get(key)
                if blake3(data).hexdigest() == point_id:
                    read_header(data, key)
                    good.add(point_id)
            except StorageError as exc:
                if exc.is_transient:
                    raise
        return good

    def forget_known(self, point_ids: Iterable[str]) -> None:
        """Drop points this client forgot from its record (their tombstones vouch for them)."""
        ids = list(point_ids)
        if ids:
            self.known.update(self.config_hash, remove=ids)

    def accept_rollback(self) -> list[str]:
        """Re-baseline this client's record on the repository as it is now (an administrator
        restored an older copy on purpose).  Returns the ids that were recorded but are gone."""
        baseline = self.known.load()
        ids = self._list_point_ids()
        self.known.update(self.config_hash, add=self._authentic(ids), replace=True)
        return sorted(baseline.points - set(ids)) if baseline else []

    def summaries(self, damaged: list[DamagedPoint] | None = None) -> Iterator[PointSummary]:
        """Every restore point's header, validated.  A point whose manifest cannot be read,
        fails authentication or its content hash, or has a malformed header is left out and
        appended to ``damaged`` (with the reason) instead of failing the whole listing.
        ``forget`` runs beside backups and listings (shared lock): a point whose manifest
        vanishes between the listing and its read is left out when its tombstone vouches that
        it was forgotten; without one it is damaged (or the read error stands).  Headers read
        once are remembered by this object (a manifest never changes under its name); the
        listing of ids is fresh on every call."""
        for point_id in self.point_ids():
            known = self._headers.get(point_id)
            if known is not None:  # a manifest never changes under its name (its content hash)
                yield known
                continue
            key = point_key(point_id)
            try:
                data = self.backend.get(key)
                if blake3(data).hexdigest() != point_id:
                    raise DataCorrupt(key, "manifest content does not match its name")
                header = read_header(data, key)
            except ObjectNotFound:
                from vmkeep.storage.forget import tombstoned

                if tombstoned(self.backend, [point_id]):
                    continue  # forgotten since the listing
                if damaged is None:
                    raise
                damaged.append(
                    DamagedPoint(point_id, "manifest vanished after the listing, no tombstone")
                )
                continue
            except StorageError as exc:
                if exc.is_transient:
                    raise
                if damaged is not None:
                    # the object is the point itself: its detail says enough
                    reason = exc.args[-1] if len(exc.args) == 2 else exc.get_message()
                    damaged.append(DamagedPoint(point_id, str(reason)))
                continue
            summary = PointSummary(
                point_id,
                header["name"],
                header["kind"],
                datetime.fromisoformat(header["time"]),
                header.get("parent"),
                header["disks"],
                header.get("meta") or {},
            )
            self._headers[point_id] = summary
            yield summary

    def known_summary(self, point_id: str) -> PointSummary | None:
        """The header of ``point_id`` when this object has read it already (a listing, a
        ``NAME@latest`` resolved), else ``None``: no I/O."""
        return self._headers.get(point_id)

    def list_points(
        self, name: str | None = None, damaged: list[DamagedPoint] | None = None
    ) -> list[PointSummary]:
        """Restore points (optionally those called ``name``), oldest first; damaged ones are
        skipped and, with a ``damaged`` list, reported there (see :meth:`summaries`)."""
        points = [s for s in self.summaries(damaged) if name is None or s.name == name]
        return sorted(points, key=lambda s: (s.time, s.id))

    def resolve(self, ref: str) -> str:
        """Resolve an id, unique id prefix, ``latest`` or ``NAME@latest`` to a full id."""
        if not ref.strip():  # not a prefix of every id
            from vmkeep.errors import UsageError

            raise UsageError("an empty restore point reference: give an id, a prefix of one, "
                             "NAME@latest or latest")
        if ref == "latest" or ref.endswith("@latest"):
            name = None if ref == "latest" else ref.removesuffix("@latest")
            points = self.list_points(name)
            if not points:
                raise PointNotFound(ref)
            return points[-1].id
        matches = [i for i in self.point_ids() if i.startswith(ref.lower())]
        if not matches:
            named = bool(ref) and any(s.name == ref for s in self.summaries())
            hint = f"'{ref}' is a name: its newest point is '{ref}@latest'." if named else ""
            raise PointNotFound(ref, hint)
        if len(matches) > 1:
            raise AmbiguousPoint(ref, ", ".join(m[:12] for m in matches[:5]))
        return matches[0]

    def manifest_data(self, ref: str) -> tuple[str, bytes]:
        """``(full id, bytes)`` of the manifest of restore point ``ref`` (an id, a prefix or
        ``NAME@latest``; any kind), fetched once and authenticated: its BLAKE3 is its name.
        ``PointNotFound``, ``DataCorrupt``."""
        point_id = self.resolve(ref)
        key = point_key(point_id)
        try:
            data = self.backend.get(key)
        except ObjectNotFound:
            raise PointNotFound(ref) from None
        if blake3(data).hexdigest() != point_id:
            raise DataCorrupt(key, "manifest content does not match its name")
        return point_id, data

    def load_point(self, ref: str) -> RestorePoint:
        """Image or VM restore point ``ref``: ``WrongPointKind`` for a file point (see
        :func:`vmkeep.storage.file_manifest.load_any_point` for either)."""
        point_id, data = self.manifest_data(ref)
        return decode_point(data, point_id)

    def latest_point(self, name: str, kind: str | None = None) -> RestorePoint | None:
        points = [p for p in self.list_points(name) if kind is None or p.kind == kind]
        return self.load_point(points[-1].id) if points else None


def _tombstones_may_have_expired(baseline: StateRecord, now: datetime) -> bool:
    """Whether a tombstone this client would need may have expired since it last listed."""
    from vmkeep.storage.forget import TOMBSTONE_TTL
    from vmkeep.storage.known_state import LISTED_REFRESH

    listed = baseline.listed
    return listed is not None and now - listed > TOMBSTONE_TTL + LISTED_REFRESH
