"""Finding 6 (sizes): a tiny manifest claiming a 32 TiB disk in 4 Mi rows.

``restore image`` fails with a typed error (exit 15) before writing anything, on a target that
cannot hold the size (here ``ulimit -f`` of 1 GiB stands for ext4's 16 TiB limit); ``ls`` and
``check`` decode the manifest column-wise and stay far below the 1.25 GB they used to take.
Peak RSS is measured per child process by ``bench/manifest_memory.py`` (``wait4``), which the
test runs as it is documented in docs/performance.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fast_kdf import ROOT
from tests.security.big_manifest import big_manifest
from vmkeep.storage.manifest import decode_point

#: The limit the test holds ls/check/restore to (measured 389 / 138 / 388 MB; 1.25 GB before).
MAX_RSS_MB = 700


def test_huge_claim_is_decoded_without_a_python_object_per_row() -> None:
    point_id, data = big_manifest(rows=1 << 16)
    point = decode_point(data, point_id)
    table = point.chunks[0]
    assert len(table) == 1 << 16 and table.size == (1 << 16) * (8 << 20)
    assert table.is_zero(0) and table.is_zero(len(table) - 1)
    assert isinstance(table.ids, bytearray) and len(table.ids) == 32 << 16


def test_32_tib_claim_fails_typed_and_ls_check_stay_small(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "manifest_memory.py")],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["rows"] == 4 << 20 and result["manifest_bytes"] < 1 << 20
    restore = result["restore_image"]
    assert restore["exit"] == 15 and "cannot hold disk 0" in restore["last_line"]
    assert result["ls"]["exit"] == 0 and result["check"]["exit"] == 0
    for verb in ("ls", "check", "restore_image"):
        assert result[verb]["rss_mb"] < MAX_RSS_MB, (verb, result[verb])


def test_rows_of_undescribed_disks_are_not_mixed_in() -> None:
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from blake3 import blake3

    from vmkeep.storage.manifest import SCHEMA

    header = {"format": "vmkeep-restore-point", "version": 1, "kind": "image", "name": "two",
              "time": "2026-01-01T00:00:00+00:00", "disks": [
                  {"index": 0, "name": "d0", "size": 200, "chunk_size": 100}]}
    table = pa.table(
        [pa.array([0, 0, 7], pa.int32()), pa.array([0, 100, 0], pa.int64()),
         pa.array([100, 100, 50], pa.int32()), pa.nulls(3, pa.binary(32)),
         pa.array([bytes(16)] * 3, pa.binary(16))],
        schema=SCHEMA.with_metadata({b"vmkeep": json.dumps(header).encode()}),
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    data = sink.getvalue()
    point = decode_point(data, blake3(data).hexdigest())
    assert list(point.chunks) == [0] and list(point.chunks[0].offsets) == [0, 100]
