"""Repository verification: structure always, every byte with ``read_data``.

A :class:`Problem` names what is damaged and, for chunk damage, every restore point, disk and
offset that references it — the information an administrator needs to decide what to re-run.
The check never modifies the repository.

Structure check: config, every index and manifest parses; every pack an index names exists with
a plausible size; every chunk a manifest references is indexed in an existing pack.
Data check (``read_data``): every pack is read whole, its name must equal its BLAKE3, its trailer
must agree with the index, and every blob must decode and match its keyed id.
``subset=(n, m)`` checks only packs whose id falls in share ``n`` of ``m`` (rotate ``n``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from blake3 import blake3

from vmkeep.storage.codec import ZERO_ID
from vmkeep.storage.errors import FormatError, ObjectNotFound, StorageError
from vmkeep.storage.forget import FORGOTTEN_PREFIX
from vmkeep.storage.heal import (
    Damage,
    DamageRecord,
    damaged_locations,
    load_damage,
    record_damage,
    update_damage,
    usable_rows,
)
from vmkeep.storage.index import decode_index
from vmkeep.storage.manifest import decode_point, point_key, read_header
from vmkeep.storage.pack import pack_id_from_key, pack_key, parse_pack
from vmkeep.storage.repository import Repository


@dataclass
class Problem:
    kind: str  # missing-pack, corrupt-pack, missing-chunk, corrupt-chunk, bad-index, bad-manifest
    detail: str
    object: str = ""
    affected: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "object": self.object,
            "detail": self.detail,
            "affected": self.affected,
        }


@dataclass
class CheckReport:
    points: int = 0
    packs: int = 0
    blobs: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: Not damage, but worth an administrator's attention (e.g. a forget that did not finish).
    warnings: list[str] = field(default_factory=list)
    #: Chunks an earlier check found damaged that a backup has stored again, with their points.
    healed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "points": self.points,
            "packs": self.packs,
            "blobs": self.blobs,
            "bytes_read": self.bytes_read,
            "problems": [p.to_json() for p in self.problems],
            "warnings": self.warnings,
            "healed": self.healed,
        }


def check_repository(
    repo: Repository,
    read_data: bool = False,
    subset: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    report = CheckReport()
    repo.ensure_lease()  # a reader lease: prune keeps what this check may still read
    damage = load_damage(repo.backend)
    index = _load_index(repo, report, damaged_locations(damage))
    packs = {pack_id_from_key(k): size for k, size in repo.backend.list("packs")}
    report.packs = len(packs)
    report.blobs = len(index)

    # chunk id -> where it is used (point, disk or file path, offset); expanded for damage only
    users: dict[bytes, list[tuple[str, str, int | str, int]]] = defaultdict(list)
    bad_blobs: dict[bytes, tuple[str, str]] = {}
    point_ids = repo.point_ids()
    _unfinished_forgets(repo, point_ids, report)
    for point_id in point_ids:
        key = point_key(point_id)
        try:
            data = repo.backend.get(key)
            if blake3(data).hexdigest() != point_id:
                raise StorageError(f"{key}: content does not match its name")
            name, uses = _chunk_uses(data, point_id, key)
        except StorageError as exc:
            report.problems.append(Problem("bad-manifest", exc.get_message(), key))
            continue
        report.points += 1
        for blob_id, where, offset in uses:
            users[blob_id].append((point_id, name, where, offset))
            loc = index.get(blob_id)
            if loc is None:
                bad_blobs[blob_id] = ("missing-chunk", "chunk is not in any index")
            elif loc.pack_id not in packs:
                bad_blobs[blob_id] = ("missing-pack", f"pack {loc.pack_id.hex()} is missing")

    verified: set[bytes] = set()  # packs read in full
    if read_data:
        for pack_id in sorted(packs):
            if subset and int.from_bytes(pack_id[:4], "big") % subset[1] != subset[0] - 1:
                continue
            _check_pack(repo, pack_id, index, report, bad_blobs, progress)
            verified.add(pack_id)

    by_kind: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for blob_id, (kind, detail) in bad_blobs.items():
        by_kind[(kind, detail)].append(blob_id)
    for (kind, detail), blob_ids in sorted(by_kind.items()):
        affected = [
            {"point": p, "name": n, **_where(d), "offset": off, "chunk": b.hex()}
            for b in blob_ids
            for p, n, d, off in users.get(b, [])
        ]
        obj = detail.split()[1] if kind == "missing-pack" else ""
        report.problems.append(Problem(kind, detail, obj, affected))
    _heal_report(repo, index, damage, bad_blobs, users, report, verified)
    return report


def _heal_report(
    repo: Repository,
    index: Any,
    damage: list[DamageRecord],
    bad_blobs: dict[bytes, tuple[str, str]],
    users: dict[bytes, list[tuple[str, str, int | str, int]]],
    report: CheckReport,
    verified: set[bytes],
) -> None:
    """Report the recorded damage a backup has healed (once: the entry is marked healed and its
    location stays excluded); record new damage so that the next backup that reads the same data
    stores it again (:mod:`vmkeep.storage.heal`).  Damage at a location that verifies again (the
    pack was repaired in place) is dropped."""
    known: set[bytes] = set()
    for record in damage:
        healed, repaired = set(), set()
        for d in record.entries:
            known.add(d.blob)
            loc = index.get(d.blob)
            if d.healed or d.blob in bad_blobs or loc is None:
                continue
            if loc.pack_id == d.pack:
                if d.pack in verified:  # read in full and sound again: repaired in place
                    repaired.add(d.blob)
                continue
            healed.add(d.blob)
            report.healed.append(
                {
                    "chunk": d.blob.hex(),
                    "was": d.kind,
                    "pack": loc.pack_id.hex(),
                    "points": sorted({p for p, _n, _d, _o in users.get(d.blob, [])}),
                }
            )
        update_damage(repo.backend, record, healed, repaired)
    fresh = []
    for blob_id, (kind, _detail) in bad_blobs.items():
        if blob_id in known:
            continue
        loc = index.get(blob_id)
        fresh.append(Damage(blob_id, loc.pack_id if loc is not None else None, kind))
    record_damage(repo.backend, fresh)


def _unfinished_forgets(repo: Repository, point_ids: list[str], report: CheckReport) -> None:
    """A tombstone beside a live manifest: a forget was interrupted between its two steps.  The
    point restores normally but rollback detection no longer vouches for it."""
    live = set(point_ids)
    for key, _size in repo.backend.list(FORGOTTEN_PREFIX):
        point_id = key.rsplit("/", 1)[-1]
        if point_id in live:
            report.warnings.append(
                f"restore point {point_id[:12]} has a forget tombstone but still exists: a "
                f"forget was interrupted; run `vmkeep forget {point_id[:12]}` again to finish it"
            )


def _where(disk_or_path: int | str) -> dict[str, Any]:
    if isinstance(disk_or_path, str):
        return {"disk": None, "path": disk_or_path}
    return {"disk": disk_or_path}


def _chunk_uses(
    data: bytes, point_id: str, key: str
) -> tuple[str, Iterator[tuple[bytes, int | str, int]]]:
    """The point's name and every non-zero chunk it uses: (id, disk number or file path, offset).

    Image and VM points are decoded fully (schema and tiling checked); file points through
    :mod:`vmkeep.storage.file_manifest`.  Unknown kinds are reported as bad manifests.
    """
    kind = read_header(data, key).get("kind")
    if kind == "files":
        from vmkeep.storage.file_manifest import decode_file_point

        fpoint = decode_file_point(data, point_id)

        def file_uses() -> Iterator[tuple[bytes, int | str, int]]:
            for entry in fpoint.entries:
                offset = 0
                path = entry.path.decode("utf-8", "surrogateescape")
                for blob_id, length in zip(entry.chunks(), entry.chunk_lengths, strict=False):
                    if blob_id != ZERO_ID:
                        yield blob_id, path, offset
                    offset += length

        return fpoint.name, file_uses()
    if kind not in ("image", "vm"):
        raise FormatError(key, f"restore point kind {kind!r} is unknown to this version")
    point = decode_point(data, point_id)

    def image_uses() -> Iterator[tuple[bytes, int | str, int]]:
        for disk, table in point.chunks.items():
            for i in range(len(table)):
                blob_id = table.blob_id(i)
                if blob_id != ZERO_ID:
                    yield blob_id, disk, table.offsets[i]

    return point.name, image_uses()


def _load_index(
    repo: Repository,
    report: CheckReport,
    damaged: set[tuple[bytes, bytes]] | None = None,
) -> Any:
    """The index, preferring locations in existing packs that no check recorded as damaged
    (a healed chunk is checked at its new copy); the other locations follow, so a chunk whose
    every copy is gone or damaged is still reported as such."""
    from vmkeep.storage.index import MasterIndex

    damaged = damaged or set()
    tables: list[Any] = []
    problems: list[Problem] = []
    for _attempt in range(5):  # an index file deleted meanwhile: prune rewrote it, list again
        tables, problems = [], []
        try:
            for key, _ in repo.backend.list("index"):
                try:
                    tables.append(decode_index(repo.backend.get(key), key))
                except ObjectNotFound:
                    raise
                except StorageError as exc:
                    problems.append(Problem("bad-index", exc.get_message(), key))
        except ObjectNotFound:
            continue
        break
    report.problems.extend(problems)
    present = {pack_id_from_key(k) for k, _ in repo.backend.list("packs")}
    index = MasterIndex()
    listed = set()
    for table in tables:
        listed.update(table.column("pack_id").unique().to_pylist())
    missing = listed - present
    for table in tables:
        index.add_table(usable_rows(table, missing, damaged) if missing or damaged else table)
    if missing or damaged:
        for table in tables:  # first copies win: these add only chunks with no usable copy
            index.add_table(table)
    return index


def _check_pack(
    repo: Repository,
    pack_id: bytes,
    index: Any,
    report: CheckReport,
    bad_blobs: dict[bytes, tuple[str, str]],
    progress: Callable[[int], None] | None,
) -> None:
    key = pack_key(pack_id)
    data = repo.backend.get(key)
    report.bytes_read += len(data)
    if progress:
        progress(len(data))
    if blake3(data).digest() != pack_id:
        detail = f"pack {pack_id.hex()} content does not match its name"
    else:
        detail = ""
    try:
        entries = parse_pack(data, key, repo.cipher)
    except StorageError as exc:
        entries = []
        detail = detail or exc.get_message()
    replaced = 0
    for entry in entries:
        loc = index.get(entry.blob_id)
        if loc is not None and loc.pack_id != pack_id:
            replaced += 1
            continue  # a second copy (e.g. the damaged one a backup replaced): never read
        try:
            repo.decode_payload(
                entry.blob_id,
                entry.codec,
                data[entry.offset : entry.offset + entry.stored_length],
                entry.raw_length,
                key,
            )
            ok = True
        except StorageError:
            ok = False
        if not ok:
            bad_blobs[entry.blob_id] = (
                "corrupt-chunk",
                f"pack {pack_id.hex()} holds a damaged chunk",
            )
    if detail:
        # Blobs of a damaged pack whose trailer could not be read: every indexed blob in it.
        for blob_id, loc in index.items():
            if loc.pack_id == pack_id and blob_id not in bad_blobs and not entries:
                bad_blobs[blob_id] = ("corrupt-pack", detail)
        if entries and replaced and not any(e.blob_id in bad_blobs for e in entries):
            # every chunk read from it verifies: the damage is in copies backups replaced
            report.warnings.append(
                f"{detail}; only in chunks stored again elsewhere (healed), the rest verify"
            )
        elif entries:
            report.problems.append(Problem("corrupt-pack", detail, key))
