"""The repository's ``config`` object: format version and parameters, fixed at ``init``.

Format (JSON, version 1)::

    {"format": "vmkeep-repository", "version": 1, "id": hex, "created": ISO-8601,
     "chunk_id": "blake3-keyed", "hash_key": hex (32 bytes),
     "image_chunk_size": bytes, "compression": "zstd", "compression_level": n,
     "pack_size": bytes, "cdc": {"min": n, "avg": n, "max": n},
     "encryption": "none" | "aes-256-gcm"}

``encryption`` (added in the same version 1; absent means ``"none"``): an encrypted repository
has ``hash_key = ""`` — the chunk-id key is part of the master key (see :mod:`.crypto`).  Readers
that predate the field refuse such a config rather than misread it.

``config`` is the only object that is ever rewritten in place, and only by key management.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from vmkeep import clock
from vmkeep.storage.codec import MAX_BLOB_SIZE
from vmkeep.storage.errors import FormatError

CONFIG_KEY = "config"
REPO_FORMAT = "vmkeep-repository"
REPO_VERSION = 1
#: Fixed chunk size for disk images; see docs/performance.md for how it was chosen.
DEFAULT_IMAGE_CHUNK = 1024 * 1024
DEFAULT_PACK_SIZE = 32 * 1024 * 1024


@dataclass
class RepoConfig:
    id: str
    created: str
    hash_key: str
    image_chunk_size: int = DEFAULT_IMAGE_CHUNK
    pack_size: int = DEFAULT_PACK_SIZE
    compression: str = "zstd"
    compression_level: int = 1
    chunk_id: str = "blake3-keyed"
    #: "none", or "aes-256-gcm" (then ``hash_key`` is empty: it lives in the master key)
    encryption: str = "none"
    cdc: dict[str, int] = field(
        default_factory=lambda: {"min": 256 * 1024, "avg": 1024 * 1024, "max": 4 * 1024 * 1024}
    )
    format: str = REPO_FORMAT
    version: int = REPO_VERSION

    @classmethod
    def new(cls, image_chunk_size: int = DEFAULT_IMAGE_CHUNK, level: int = 1) -> RepoConfig:
        if not 64 * 1024 <= image_chunk_size <= 16 * 1024 * 1024 or image_chunk_size % 4096:
            raise ValueError("chunk size must be a multiple of 4 KiB between 64 KiB and 16 MiB")
        return cls(
            id=secrets.token_hex(16),
            created=clock.now().isoformat(),
            hash_key=secrets.token_hex(32),
            image_chunk_size=image_chunk_size,
            compression_level=level,
        )

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def decode(cls, data: bytes) -> RepoConfig:
        try:
            obj: dict[str, Any] = json.loads(data)
        except ValueError:
            raise FormatError(CONFIG_KEY, "not JSON") from None
        if not isinstance(obj, dict) or obj.get("format") != REPO_FORMAT:
            raise FormatError(CONFIG_KEY, "not a vmkeep repository config")
        if obj.get("version") != REPO_VERSION:
            raise FormatError(CONFIG_KEY, f"unsupported repository version {obj.get('version')}")
        try:
            config = cls(**obj)
        except TypeError as exc:
            raise FormatError(CONFIG_KEY, str(exc)) from None
        if config.encryption not in ("none", "aes-256-gcm"):
            raise FormatError(CONFIG_KEY, f"unknown encryption {config.encryption!r}")
        key_len = 0 if config.encrypted else 64
        if not 0 < config.image_chunk_size <= MAX_BLOB_SIZE or len(config.hash_key) != key_len:
            raise FormatError(CONFIG_KEY, "implausible parameters")
        return config
