"""Repository statistics: what is referenced, what prune would free, what each point costs.

``vmkeep stats`` reports (bytes are stored bytes, after compression and encryption):

* ``pack_bytes`` — every pack; ``referenced_bytes`` — the blobs some restore point references
  (each counted once); ``unreferenced_bytes`` — the rest (garbage, duplicates, pack overhead);
* ``held_by_grace_bytes`` / ``held_by_leases_bytes`` — unreferenced data prune would keep now
  (younger than the grace; or unlisted but waiting for older leases, see
  :mod:`vmkeep.storage.gc`), from a prune dry run;
* per restore point, ``unique_bytes``: blobs no other point references — what forgetting that
  point alone (then pruning) would free.

A piece inside a compression unit (repository version 4) counts its share of the unit's stored
bytes, in proportion to its length (a unit is freed only once none of its pieces is used, so
``unique_bytes`` is what forgetting frees at most).

Memory: the referenced ids per point are held as Arrow arrays (about 40 bytes per reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vmkeep.storage.index import read_index
from vmkeep.storage.manifest import point_key
from vmkeep.storage.pack import list_packs
from vmkeep.storage.prune import DEFAULT_GRACE, ID_TYPE, point_blob_ids, prune, stored_share
from vmkeep.storage.recipes import RecipeTable
from vmkeep.storage.repository import Repository


@dataclass
class RepoStats:
    points: int = 0
    packs: int = 0
    pack_bytes: int = 0
    referenced_bytes: int = 0
    unreferenced_bytes: int = 0
    held_by_grace_bytes: int = 0
    held_by_leases_bytes: int = 0
    per_point: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def repository_stats(repo: Repository, grace: timedelta = DEFAULT_GRACE) -> RepoStats:
    """Compute :class:`RepoStats` (read-only; takes a reader lease like any reader)."""
    stats = RepoStats()
    sizes = list(list_packs(repo.backend))
    stats.packs = len(sizes)
    stats.pack_bytes = sum(size for _, size in sizes)
    tables = []
    for key, _ in repo.backend.list("index"):
        t = read_index(repo.backend, key)
        # a piece inside a compression unit counts its share of the unit (version 4)
        tables.append(pa.table({"blob_id": t.column("blob_id"),
                                "stored_length": stored_share(t)}))
    index = (
        pa.concat_tables(tables)
        .group_by("blob_id", use_threads=False)
        .aggregate([("stored_length", "max")])
        if tables
        else pa.table(
            {"blob_id": pa.array([], ID_TYPE), "stored_length_max": pa.array([], pa.uint64())}
        )
    )
    summaries = repo.list_points()
    stats.points = len(summaries)
    parts = []
    recipes = RecipeTable(repo)  # empty in a version-1 repository
    for no, summary in enumerate(summaries):
        data = repo.backend.get(point_key(summary.id))
        ids = [a for a in point_blob_ids(data, summary.id) if len(a)]
        unique = pc.unique(pa.chunked_array(ids, ID_TYPE)) if ids else pa.array([], ID_TYPE)
        if len(recipes) and len(unique):  # a recipe's pieces are referenced with it
            pieces = list(recipes.pieces(recipes.recipes_among(unique)))
            if pieces:
                unique = pc.unique(pa.chunked_array([unique, *pieces], ID_TYPE))
        parts.append(
            pa.table({"blob_id": unique, "point": pa.array([no] * len(unique), pa.int32())})
        )
    refs = (
        pa.concat_tables(parts)
        if parts
        else pa.table({"blob_id": pa.array([], ID_TYPE), "point": pa.array([], pa.int32())})
    )
    counts = refs.group_by("blob_id", use_threads=False).aggregate(
        [("point", "count"), ("point", "min")]
    )
    sized = counts.join(index, "blob_id", join_type="inner", use_threads=False)
    stored = sized.column("stored_length_max").cast(pa.uint64())
    stats.referenced_bytes = int(pc.sum(stored).as_py() or 0)
    stats.unreferenced_bytes = stats.pack_bytes - stats.referenced_bytes
    singles = sized.filter(pc.equal(sized.column("point_count"), 1))
    unique_bytes = [0] * len(summaries)
    if len(singles):
        per = (
            pa.table(
                {
                    "point": singles.column("point_min"),
                    "bytes": singles.column("stored_length_max").cast(pa.uint64()),
                }
            )
            .group_by("point", use_threads=False)
            .aggregate([("bytes", "sum")])
        )
        for no, total in zip(
            per.column("point").to_pylist(), per.column("bytes_sum").to_pylist(), strict=True
        ):
            unique_bytes[no] = int(total)
    stats.per_point = [
        {
            "id": s.id,
            "short_id": s.id[:8],
            "name": s.name,
            "kind": s.kind,
            "time": s.time.isoformat(),
            "unique_bytes": unique_bytes[no],
        }
        for no, s in enumerate(summaries)
    ]
    dry = prune(repo, grace=grace, dry_run=True)
    stats.held_by_grace_bytes = dry.bytes_held_by_grace
    stats.held_by_leases_bytes = dry.bytes_held_by_leases
    return stats
