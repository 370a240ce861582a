"""The tape catalog in the repository, and the objects a restore point needs.

One JSON object per tape file, ``tape/files/<tape id>-<file number:05d>.json`` (written through
the repository's backend, so encrypted repositories keep it encrypted)::

    {"version": 2, "tape_id": "VMK001L6", "pool": "daily", "file": 1, "job": "…",
     "repository_id": "…", "written_at": "…", "block_size": 1048576, "complete": true,
     "bytes": n, "objects": {"packs/ab/…": {"size": n, "xxh3": "…"}, "config": {"size": n,
     "b3": "…"}, …},
     "points": {"<point id>": ["manifests/….parquet", "packs/…", "index/…", …]},
     "start_block": n | null,
     "refs": {"<point id>": {"packs/…": ["VMK001L6", 1], …}}}

Each object's digest is the one its member's pax record holds: ``b3`` (BLAKE3) or, since
record version 2 (tape format 3), ``xxh3`` (XXH3-128) for a version-2 pack; version-1 records
have ``b3`` only and still read (:func:`vmkeep.tape.pax.entry_digest`).

``refs`` makes tape copies incremental: an object a point needs that is already on a live
(unexpired) cartridge of the same pool is not written again; the record of the file holding the
point's manifest names where it is.

``points`` lists, per restore point, the objects of that point *in this file* (a point spanning
two cartridges appears in both files' records; together they hold all its objects).  ``tape
scan`` rebuilds these records from the tapes' own descriptors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from vmkeep.storage.errors import BlobMissing
from vmkeep.storage.index import id_list, read_index
from vmkeep.storage.manifest import point_key
from vmkeep.storage.pack import pack_key
from vmkeep.storage.prune import point_blob_ids
from vmkeep.storage.repository import DamagedPoint, Repository

PREFIX = "tape/files"
#: 2: an object's digest may be ``xxh3`` instead of ``b3`` (tape format 3)
VERSION = 2
#: Objects every tape file starts with, so each file opens as a repository on its own.
BASE_PREFIXES = ("config", "config.sealed", "keys")


@dataclass
class FileRecord:
    tape_id: str
    pool: str
    file: int
    job: str
    repository_id: str
    written_at: str
    block_size: int
    complete: bool = True
    bytes: int = 0
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    points: dict[str, list[str]] = field(default_factory=dict)
    #: logical block where the file starts (READ POSITION), None where the drive cannot tell
    start_block: int | None = None
    #: per point, objects it needs that an earlier job of the pool already wrote elsewhere:
    #: {point id: {key: [tape id, file number]}}
    refs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{PREFIX}/{self.tape_id}-{self.file:05d}.json"

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, **{k: getattr(self, k) for k in (
            "tape_id", "pool", "file", "job", "repository_id", "written_at", "block_size",
            "complete", "bytes", "objects", "points", "start_block", "refs")}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FileRecord:
        obj = dict(obj)
        obj.pop("version", None)
        return cls(**obj)


def save(repo: Repository, rec: FileRecord) -> None:
    repo.backend.put(rec.key, json.dumps(rec.to_json(), sort_keys=True).encode())


def records(repo: Repository) -> list[FileRecord]:
    out = []
    for key, _ in repo.backend.list(PREFIX):
        out.append(FileRecord.from_json(json.loads(repo.backend.get(key))))
    return sorted(out, key=lambda r: (r.tape_id, r.file))


def forget_tape(repo: Repository, tape_id: str) -> int:
    """Remove the records of cartridge ``tape_id`` (it is being relabelled: its files are about
    to be overwritten, so no restore may look for points there); returns how many."""
    gone = 0
    mine = f"{PREFIX}/{tape_id}-"
    for key in [k for k, _ in repo.backend.list(PREFIX) if k.startswith(mine)]:
        repo.backend.delete(key)
        gone += 1
    return gone


def points_on_tape(repo: Repository, pool: str | None = None) -> set[str]:
    """Points some tape file (of ``pool``, when given) holds."""
    return {p for r in records(repo) if pool is None or r.pool == pool for p in r.points}


def points_to_copy(
    repo: Repository, pool: str, *, newest_only: bool = False,
    damaged: list[DamagedPoint] | None = None,
) -> list[str]:
    """Full ids, oldest first, of the points a copy to ``pool`` takes when no points are named:
    every point no tape file of ``pool`` holds yet, or (``newest_only``) the newest point of
    each backup name unless ``pool`` holds it already (a weekly or monthly GFS pool takes one
    point per VM and period).  Each pool is judged on its own: a point on a daily cartridge is
    still new to the weekly pool.  Points whose manifest cannot be read are not chosen; they are
    added to ``damaged``."""
    done = points_on_tape(repo, pool)
    summaries = repo.list_points(damaged=damaged)
    if newest_only:
        newest = {s.name: s.id for s in summaries}  # oldest first: the last one wins
        chosen = set(newest.values())
        summaries = [s for s in summaries if s.id in chosen]
    return [s.id for s in summaries if s.id not in done]


def on_tape(recs: Iterable[FileRecord], pool: str, live: set[str]) -> dict[str, tuple[str, int]]:
    """Objects already on cartridges ``live`` of ``pool`` (first copy wins): key → (tape, file)."""
    out: dict[str, tuple[str, int]] = {}
    for r in recs:
        if r.pool != pool or r.tape_id not in live:
            continue
        for key in r.objects:
            if key.startswith(("packs/", "index/", "manifests/")):
                out.setdefault(key, (r.tape_id, r.file))
    return out


def base_objects(repo: Repository) -> list[str]:
    keys = [k for k in ("config", "config.sealed") if repo.raw_backend.exists(k)]
    keys += sorted(k for k, _ in repo.raw_backend.list("keys"))
    return keys


class ObjectPlanner:
    """Which repository objects a restore point needs: its packs, the index files that list
    them, and its manifest (last)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._pack_index: dict[bytes, set[str]] | None = None

    def _index_files(self) -> dict[bytes, set[str]]:
        if self._pack_index is None:
            m: dict[bytes, set[str]] = {}
            for key, _ in self.repo.backend.list("index"):
                table = read_index(self.repo.backend, key)
                col = pc.unique(table.column("pack_id").combine_chunks())
                for pid in id_list(col):
                    m.setdefault(pid, set()).add(key)
            self._pack_index = m
        return self._pack_index

    def objects(self, point_id: str) -> list[str]:
        repo = self.repo
        mkey = point_key(point_id)
        data = repo.backend.get(mkey)
        packs: set[bytes] = set()
        recipe_packs: set[bytes] = set()  # written first: a streaming restore meets them first
        index = repo.index
        for ids in point_blob_ids(data, point_id):
            for bid in set(id_list(ids)):
                loc = index.get(bid)
                if loc is None:
                    raise BlobMissing(bid.hex()[:16], "unknown")
                packs.add(loc.pack_id)
                pieces = repo.recipe_pieces(bid)
                if pieces is not None:  # a recipe needs its pieces' packs
                    recipe_packs.add(loc.pack_id)
                for piece in pieces or ():
                    ploc = index.get(piece)
                    if ploc is None:
                        raise BlobMissing(piece.hex()[:16], "unknown")
                    packs.add(ploc.pack_id)
        by_pack = self._index_files()
        idx: set[str] = set()
        for p in packs:
            idx |= by_pack.get(p, set())
        first = sorted(pack_key(p) for p in recipe_packs)
        return first + sorted(pack_key(p) for p in packs - recipe_packs) + sorted(idx) + [mkey]


def plan(repo: Repository, point_ids: Iterable[str]) -> dict[str, list[str]]:
    planner = ObjectPlanner(repo)
    return {p: planner.objects(p) for p in point_ids}
