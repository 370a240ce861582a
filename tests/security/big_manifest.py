"""A huge image manifest built column-wise (no Python object per row): ``rows`` chunks of
``chunk`` bytes, all zero (NULL ids), so 4 million rows claim a 32 TiB disk in well under 1 MB.

``python -m tests.security.big_manifest REPO [ROWS]`` plants one in a local repository (used by
``bench/manifest_memory.py`` and the memory regression test)."""

from __future__ import annotations

import io
import json
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from blake3 import blake3

from vmkeep.storage.codec import ID_SIZE
from vmkeep.storage.manifest import FP_SIZE, SCHEMA, point_key

CHUNK = 8 << 20
ROWS = 4 << 20  # 4 Mi rows x 8 MiB = 32 TiB


def big_manifest(rows: int = ROWS, chunk: int = CHUNK, name: str = "huge") -> tuple[str, bytes]:
    """``(point id, manifest bytes)``."""
    lengths = pa.repeat(pa.scalar(chunk, pa.int32()), rows)
    offsets = pc.subtract(pc.cumulative_sum(lengths.cast(pa.int64())), lengths.cast(pa.int64()))
    header = {
        "format": "vmkeep-restore-point", "version": 1, "kind": "image", "name": name,
        "time": "2026-01-01T00:00:00+00:00", "parent": None, "hostname": "forger",
        "disks": [{"index": 0, "name": "disk0", "size": rows * chunk, "chunk_size": chunk,
                   "mode": "full", "reason": ""}],
        "meta": {},
    }
    table = pa.table(
        [
            pa.repeat(pa.scalar(0, pa.int32()), rows),
            offsets,
            lengths,
            pa.nulls(rows, pa.binary(ID_SIZE)),
            pa.repeat(pa.scalar(bytes(FP_SIZE), pa.binary(FP_SIZE)), rows),
        ],
        schema=SCHEMA.with_metadata({b"vmkeep": json.dumps(header).encode()}),
    )
    sink = io.BytesIO()
    pq.write_table(
        table, sink, compression="zstd", use_dictionary=["disk", "length", "xxh3"],
        column_encoding={"offset": "DELTA_BINARY_PACKED"},
    )
    data = sink.getvalue()
    return blake3(data).hexdigest(), data


def main() -> None:
    from vmkeep.storage.repository import Repository

    repo = Repository.open(sys.argv[1])
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else ROWS
    point_id, data = big_manifest(rows)
    repo.backend.put(point_key(point_id), data)
    print(point_id, len(data))


if __name__ == "__main__":
    main()
