"""The tape file format: a POSIX pax archive of repository objects (spec: docs/format.md "Tape").

Writing uses :mod:`tarfile` in stream mode (``w|``, ``PAX_FORMAT``) into a
:class:`~vmkeep.tape.stream.BlockWriter`; every member is a regular file named by its repository
key (``config``, ``config.sealed``, ``keys/<id>``, ``packs/<2>/<64>``, ``index/<64>.parquet``,
``manifests/<64>.parquet``) plus vmkeep's own descriptors under ``.vmkeep-tape/``.  Members have
mode 0644, uid/gid 0, mtime of the job, and one digest record of their bytes, so an independent
reader can verify each object without vmkeep: ``VMKEEP.b3`` (BLAKE3) — or, since tape format 3, for
a version-2 or -3 pack (``VMKPACK2``, ``VMKPACK3``) ``VMKEEP.xxh3`` (XXH3-128): such a pack is named
by the BLAKE3 of its contents table, which names every blob by its keyed BLAKE3 id, so the pack is
bound cryptographically by its name already; its member digest only has to catch what a tape or
drive garbles, and XXH3 does that at about a sixth of BLAKE3's CPU (0.032 against 0.208 CPU-seconds
per GB on the benchmark machine, ``bench/bench_digest.py``: CPU the copy job needs to keep the drive
streaming, docs/performance.md "Tape, run J").

Digests are handled as strings: the hex BLAKE3 as before, ``"xxh3:<hex>"`` for XXH3
(:func:`digest_fields` / :func:`entry_digest` map them to and from catalog entries).

Reading (:func:`read_members`) trusts nothing on the tape: names must match the key grammar
above (no ``..``, no absolute paths, no links, devices or directories), pax and GNU long-name
headers are limited to :data:`MAX_HEADER` bytes before they are read into memory, members to
:data:`MAX_MEMBER` bytes, and the content must match its ``VMKEEP.b3`` record.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, Any

import xxhash
from blake3 import blake3

from vmkeep.storage.pack import MAGIC, pack_digest
from vmkeep.tape.errors import HostileTape

MAX_HEADER = 64 * 1024
MAX_MEMBER = 4 << 30
B3_RECORD = "VMKEEP.b3"
XXH3_RECORD = "VMKEEP.xxh3"
#: prefix of an XXH3-128 digest string (a bare hex digest is BLAKE3)
XXH3 = "xxh3:"
META_DIR = ".vmkeep-tape"

_KEY = re.compile(
    r"config|config\.sealed|keys/[0-9A-Za-z._-]{1,128}|packs/[0-9a-f]{2}/[0-9a-f]{64}"
    r"|index/[0-9a-f]{64}\.parquet|manifests/[0-9a-f]{64}\.parquet"
    r"|\.vmkeep-tape/[0-9A-Za-z._-]{1,128}\.json"
)


def valid_name(name: str) -> bool:
    return _KEY.fullmatch(name) is not None and ".." not in name.split("/")


def object_digest(name: str, data: bytes | memoryview, *, b3_only: bool = False) -> str:
    """The digest record of an object (tape format 3): a version-1 pack's BLAKE3 is its name
    (named by the BLAKE3 of its bytes): it is not recomputed, which keeps the CPU for the
    drive; a version-2 or version-3 pack (``VMKPACK2``/``VMKPACK3``, named by its contents
    table) gets XXH3-128 (``"xxh3:<hex>"``, see the module docstring), or BLAKE3 with
    ``b3_only`` (cartridges of tape format 1 and 2, appended to); anything else BLAKE3 hex.
    A pack damaged on disk is refused when read back (name ≠ content)."""
    digest = ObjectDigest(name, memoryview(data)[: ObjectDigest.HEAD], b3_only=b3_only)
    digest.update(data)
    return digest.result()


class ObjectDigest:
    """:func:`object_digest` computed piece by piece, as an object is read: construct it with
    the object's name and its first :data:`HEAD` bytes (all of them for a shorter object),
    :meth:`update` it with every byte of the object in order, then take :meth:`result`.  Same
    rule, same result as :func:`object_digest` on the whole object — which lets a reader hash
    each part right after reading it, while the part is still in the CPU's caches
    (docs/performance.md, "Tape, run O").  One owner; not thread-safe."""

    #: bytes of the object's start the rule looks at (a version-1 pack's magic)
    HEAD = len(MAGIC)

    def __init__(self, name: str, head: bytes | memoryview, *, b3_only: bool = False) -> None:
        self._fixed: str | None = None  # a version-1 pack: its name is its BLAKE3
        self._prefix = ""
        self._hasher: Any = None
        if name.startswith("packs/") and bytes(head[: self.HEAD]) == MAGIC:
            self._fixed = name.rsplit("/", 1)[-1]
        elif name.startswith("packs/") and not b3_only:
            self._prefix, self._hasher = XXH3, xxhash.xxh3_128()
        else:
            self._hasher = blake3()

    def update(self, data: bytes | memoryview) -> None:
        if self._hasher is not None:
            self._hasher.update(data)

    def result(self) -> str:
        if self._fixed is not None:
            return self._fixed
        return self._prefix + str(self._hasher.hexdigest())


def _record(digest: str) -> tuple[str, str]:
    """(pax record name, value) of a digest string."""
    if digest.startswith(XXH3):
        return XXH3_RECORD, digest[len(XXH3) :]
    return B3_RECORD, digest


def digest_fields(digest: str) -> dict[str, str]:
    """The catalog entry fields of a digest string: ``{"b3": hex}`` or ``{"xxh3": hex}``."""
    if digest.startswith(XXH3):
        return {"xxh3": digest[len(XXH3) :]}
    return {"b3": digest}


def entry_digest(entry: dict[str, Any]) -> str | None:
    """The digest string of a catalog entry (inverse of :func:`digest_fields`)."""
    if "xxh3" in entry:
        return XXH3 + str(entry["xxh3"])
    b3 = entry.get("b3")
    return None if b3 is None else str(b3)


class PaxWriter:
    """Adds repository objects to one pax stream.

    Headers come from :meth:`tarfile.TarInfo.tobuf` (pax format); the object bytes go to the
    sink as they are (no copy through tarfile's stream buffer), then the NUL padding to 512.
    :meth:`close` writes the end-of-archive marker and pads to a 10240-byte record, as tar does.
    ``offset`` is the archive position after the last member (its padding included).
    """

    def __init__(self, sink: IO[bytes] | Any, mtime: float) -> None:
        self.mtime = int(mtime)
        self.sink = sink
        self.offset = 0

    def _write(self, data: bytes | memoryview) -> None:
        self.sink.write(data)
        self.offset += memoryview(data).nbytes

    def add(
        self, name: str, data: bytes | memoryview, digest: str | None = None,
        *, b3_only: bool = False,
    ) -> str:
        """Add one object; returns its digest string (``digest``, when the caller computed it
        with :func:`object_digest`, e.g. on its reader thread).  ``b3_only``: BLAKE3 records
        only (tape format 1 and 2); an XXH3 ``digest`` is then replaced.  ``data`` goes to
        the sink as it is: a read-only view is never copied here."""
        if not valid_name(name):
            raise ValueError(f"not a repository object name: {name!r}")
        if digest is None or (b3_only and digest.startswith(XXH3)):
            digest = object_digest(name, data, b3_only=b3_only)
        size = memoryview(data).nbytes
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self.mtime, 0o644
        info.uname = info.gname = "vmkeep"
        info.pax_headers = dict([_record(digest)])
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._write(data)
        if size % tarfile.BLOCKSIZE:
            self._write(bytes(tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))
        return digest

    def close(self) -> None:
        """Write the end-of-archive marker (two zero blocks), padded to a full record."""
        end = self.offset + 2 * tarfile.BLOCKSIZE
        end += -end % tarfile.RECORDSIZE
        self.sink.write(bytes(end - self.offset))


class SafeTarInfo(tarfile.TarInfo):
    """Refuses oversized pax / GNU long-name headers before tarfile reads them into memory."""

    def _proc_pax(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_HEADER:
            raise HostileTape(f"pax header of {self.size} bytes (limit {MAX_HEADER})")
        return super()._proc_pax(tarfile)  # type: ignore[misc]

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_HEADER:
            raise HostileTape(f"GNU long name of {self.size} bytes (limit {MAX_HEADER})")
        return super()._proc_gnulong(tarfile)  # type: ignore[misc]


def read_members(
    stream: IO[bytes] | Any, wanted: Callable[[str], bool] = lambda _n: True,
    until: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, bytes, str]]:
    """Yield ``(name, data, digest)`` for the wanted members of one pax stream, verified:
    ``digest`` is the digest string of the member's record kind (XXH3 for a ``VMKEEP.xxh3``
    record, else BLAKE3, checked against a ``VMKEEP.b3`` record when there is one).
    ``until``: stop (without reading its data) at the first member whose name it accepts.

    Raises :class:`HostileTape` for anything outside the format; a truncated stream (a file cut
    by a volume overflow) ends the iteration after the last complete member.
    """
    try:
        tar = tarfile.open(fileobj=stream, mode="r|", tarinfo=SafeTarInfo,  # noqa: SIM115
                           errorlevel=2, ignore_zeros=False)
    except tarfile.ReadError as exc:
        raise HostileTape(f"not a pax archive: {exc}") from None
    try:
        while True:
            try:
                info = tar.next()
            except (tarfile.ReadError, EOFError) as exc:
                if "unexpected end" in str(exc) or isinstance(exc, EOFError):
                    return
                raise HostileTape(f"bad archive header: {exc}") from None
            if info is None:
                return
            name = info.name
            if not valid_name(name):
                raise HostileTape(f"member name {name!r} is not a repository object")
            if not info.isreg():
                raise HostileTape(f"member {name!r} is not a regular file")
            if info.size > MAX_MEMBER:
                raise HostileTape(f"member {name!r} of {info.size} bytes (limit {MAX_MEMBER})")
            if until is not None and until(name):
                return
            if not wanted(name):
                continue
            f = tar.extractfile(info)
            assert f is not None
            try:
                data = f.read()
            except (tarfile.ReadError, EOFError):
                return  # truncated member: not on this tape
            if len(data) != info.size:
                return  # truncated member: not on this tape
            expected: str | None
            if XXH3_RECORD in info.pax_headers:
                record, expected = XXH3_RECORD, info.pax_headers[XXH3_RECORD]
                digest = XXH3 + xxhash.xxh3_128_hexdigest(data)
                value = digest[len(XXH3) :]
            else:
                record, expected = B3_RECORD, info.pax_headers.get(B3_RECORD)
                digest = value = blake3(data).hexdigest()
            if expected is not None and expected != value:
                raise HostileTape(f"member {name!r} does not match its {record} record")
            if name.startswith("packs/") and pack_digest(data).hex() != name.rsplit("/", 1)[-1]:
                raise HostileTape(f"pack {name!r} does not match its name")
            yield name, data, digest
    finally:
        tar.close()
