"""The repository's ``config`` object: format version and parameters, fixed at ``init``.

Format (JSON, version 5; versions 1 to 4 still read)::

    {"format": "vmkeep-repository", "version": 5, "id": hex, "created": ISO-8601,
     "chunk_id": "blake3-keyed", "hash_key": hex (32 bytes),
     "image_chunk_size": bytes, "compression": "zstd", "compression_level": n,
     "pack_size": bytes, "cdc": {"min": n, "avg": n, "max": n},
     "image_cdc": {"min": n, "avg": n, "max": n, "lookback": n} | null,
     "encryption": "none" | "aes-256-gcm"}

``image_cdc`` (version 2): image frames (``image_chunk_size``) that are not already stored are
cut again by content-defined chunking with these sizes and stored as a *recipe* blob (codec 2,
see :mod:`.codec`) listing their pieces, so data that sits at different offsets in two images
is stored once.  ``null`` (and every version-1 repository): frames are stored whole, as before.
A version-1 reader refuses a version-2 config rather than misreading its recipes.

``image_cdc.lookback`` (version 3): a new frame's cut points come from running the chunker from
``lookback`` bytes before the frame (:mod:`.cdc_frames`), so they re-synchronise with the
content before the frame edge (measured in docs/format.md, "Why content-defined pieces inside
fixed frames").  Recipes, packs and manifests are as in version 2; the version changes because
cut points are a fixed chunking parameter of the repository (a writer cutting differently
would stop deduplicating) — a version-2 reader refuses version 3 instead of cutting otherwise.
Version-2 repositories keep cutting from the frame edge (no ``lookback``).

Version 4 (compression units): the config is version 3's (``image_cdc`` with ``lookback``),
but the new pieces of a frame are compressed together as one unit (codec 3, ``VMKPACK3`` packs,
index files of version 2; see :mod:`.pack` and :mod:`.index`).  A version-3 reader would
misread codec-3 entries, so it refuses version 4.  Repositories of versions 1–3 keep their
version and keep writing their own formats (no units).

Version 5 (recipe ids): the config, packs and index are version 4's, but a frame stored as a
recipe is identified by the keyed hash of its recipe payload (``ChunkHasher.recipe_id``, under a
key derived from ``hash_key``) instead of the keyed hash of its bytes.  A new frame's bytes are
then hashed once (as pieces) instead of twice, and a reader authenticates a recipe frame by its
recipe and its pieces' own ids without hashing the joined frame again.  A frame of one piece is
stored whole under that piece's id (the keyed BLAKE3 of its bytes), as in every version.  A
version-4 reader would find no recipe frame's hash to match, so it refuses version 5.
Repositories of versions 1–4 keep their version and their frame ids; ``init`` makes version 5
(docs/format.md, "Why recipe ids").

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
REPO_VERSION = 5
#: versions this code reads (version 1 repositories have no ``image_cdc``: frames stored whole;
#: version 2 has no ``image_cdc.lookback``: cuts restart at the frame edge; version 3 stores
#: each piece on its own, version 4 in compression units, version 5 names recipe frames by
#: their recipes)
READABLE_VERSIONS = (1, 2, 3, 4, 5)
#: Content-defined pieces inside image frames, for 1 MiB frames; see docs/format.md ("Image
#: chunking") for why.  Other frame sizes scale it (:func:`default_image_cdc`).
DEFAULT_IMAGE_CDC = {"min": 16 * 1024, "avg": 64 * 1024, "max": 256 * 1024}


def default_image_cdc(frame: int) -> dict[str, int]:
    """Pieces averaging 1/16 of the frame (64 KiB for 1 MiB frames), min 1/4 and max 4× that,
    cut with a lookback of one average piece (see :func:`with_lookback`)."""
    avg = max(256, frame // 16)
    return with_lookback({"min": avg // 4, "avg": avg, "max": min(frame, avg * 4)})


def with_lookback(cdc: dict[str, int]) -> dict[str, int]:
    """``cdc`` with ``lookback`` = its average piece unless given (0 = none, a version-2
    repository).  One average piece re-synchronises the cuts about as well as four (measured:
    docs/performance.md, #23)."""
    out = dict(cdc)
    out.setdefault("lookback", out["avg"])
    if not out["lookback"]:
        del out["lookback"]
    return out
#: Fixed chunk size for disk images; see docs/performance.md for how it was chosen.
DEFAULT_IMAGE_CHUNK = 1024 * 1024
DEFAULT_PACK_SIZE = 32 * 1024 * 1024
#: The largest target pack size: a pack is built in memory (restic allows 128 MiB).
MAX_PACK_SIZE = 512 * 1024 * 1024
#: zstd levels a repository may be created with (zstd's non-"ultra" range): the repository's
#: level is what a CPU-bound backup compresses at; while its workers wait for reads the level
#: policy uses at least 3 (``vmkeep.storage.disk_backup.LevelPolicy``).
MIN_LEVEL, MAX_LEVEL = 1, 19


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
    #: None: image frames stored whole (every version-1 repository)
    image_cdc: dict[str, int] | None = None
    format: str = REPO_FORMAT
    version: int = REPO_VERSION

    @classmethod
    def new(
        cls,
        image_chunk_size: int = DEFAULT_IMAGE_CHUNK,
        level: int = 1,
        image_cdc: dict[str, int] | None = DEFAULT_IMAGE_CDC,
        version: int | None = None,
    ) -> RepoConfig:
        """A new repository's config; ``image_cdc=None`` makes a version-1 repository (frames
        stored whole, readable by older vmkeep).  ``version``: an explicit older format (4: frames
        named by their bytes; 3: also no compression units; 2: also no lookback, which
        ``image_cdc`` must then omit or set to 0), default the newest the chunking allows (1
        without ``image_cdc``, else 5)."""
        if not 64 * 1024 <= image_chunk_size <= 16 * 1024 * 1024 or image_chunk_size % 4096:
            raise ValueError("chunk size must be a multiple of 4 KiB between 64 KiB and 16 MiB")
        if not MIN_LEVEL <= level <= MAX_LEVEL:
            raise ValueError(f"compression level must be between {MIN_LEVEL} and {MAX_LEVEL}")
        if image_cdc is DEFAULT_IMAGE_CDC:
            image_cdc = default_image_cdc(image_chunk_size)
        if version == 2 and image_cdc is not None:
            image_cdc = {**image_cdc, "lookback": 0}
        if image_cdc is not None:
            image_cdc = with_lookback(image_cdc)
            _check_cdc(image_cdc, image_chunk_size)
        natural = 1 if image_cdc is None else REPO_VERSION if "lookback" in image_cdc else 2
        if version is None or version == natural:
            version = natural
        elif not (version in (3, 4) and natural == REPO_VERSION):
            raise ValueError(f"repository version {version} does not fit image_cdc {image_cdc}")
        return cls(
            id=secrets.token_hex(16),
            created=clock.now().isoformat(),
            hash_key=secrets.token_hex(32),
            image_chunk_size=image_chunk_size,
            compression_level=level,
            image_cdc=image_cdc,
            version=version,
        )

    @property
    def units(self) -> bool:
        """Whether new pieces of a frame are stored in compression units (version 4)."""
        return self.version >= 4

    @property
    def recipe_ids(self) -> bool:
        """Whether a frame stored as a recipe is identified by the keyed hash of its recipe
        instead of its bytes (version 5)."""
        return self.version >= 5

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
        if obj.get("version") not in READABLE_VERSIONS:
            raise FormatError(CONFIG_KEY, f"unsupported repository version {obj.get('version')}")
        if obj.get("version") == 1 and obj.get("image_cdc") is not None:
            raise FormatError(CONFIG_KEY, "image_cdc needs repository version 2")
        cdc = obj.get("image_cdc")
        has_lookback = isinstance(cdc, dict) and "lookback" in cdc
        if has_lookback != (obj.get("version") in (3, 4, 5)):
            raise FormatError(CONFIG_KEY, "image_cdc.lookback is exactly what version 3 adds")
        try:
            config = cls(**obj)
        except TypeError as exc:
            raise FormatError(CONFIG_KEY, str(exc)) from None
        if config.encryption not in ("none", "aes-256-gcm"):
            raise FormatError(CONFIG_KEY, f"unknown encryption {config.encryption!r}")
        key_len = 0 if config.encrypted else 64
        if not 0 < config.image_chunk_size <= MAX_BLOB_SIZE or len(config.hash_key) != key_len:
            raise FormatError(CONFIG_KEY, "implausible parameters")
        if type(config.pack_size) is not int or not 0 < config.pack_size <= MAX_PACK_SIZE:
            raise FormatError(CONFIG_KEY, f"implausible pack size {config.pack_size!r}")
        if config.image_cdc is not None:
            try:
                _check_cdc(config.image_cdc, config.image_chunk_size)
            except (ValueError, TypeError, KeyError) as exc:
                raise FormatError(CONFIG_KEY, f"bad image_cdc: {exc}") from None
        return config


def _check_cdc(cdc: dict[str, int], frame: int) -> None:
    """``ValueError`` unless ``cdc`` holds integer sizes 64 <= min <= avg <= max <= frame, and
    optionally ``0 < lookback <= frame``."""
    keys = set(cdc)
    if keys - {"lookback"} != {"min", "avg", "max"} or not all(
        type(v) is int for v in cdc.values()
    ):
        raise ValueError(
            f"image_cdc must be {{min, avg, max[, lookback]}} integers, not {cdc!r:.80}"
        )
    if not 64 <= cdc["min"] <= cdc["avg"] <= cdc["max"] <= frame:
        raise ValueError(f"image_cdc sizes out of order or larger than the frame: {cdc}")
    if not 0 < cdc.get("lookback", 1) <= frame:
        raise ValueError(f"image_cdc lookback must be 1..{frame} bytes: {cdc}")
