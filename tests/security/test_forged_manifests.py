"""Finding 6 (manifests): headers of the wrong shape, junk, a foreign repository's manifest.

`list` reports such a point as damaged (table and --json, with a reason) and lists the rest;
other commands give a typed error naming the point; nothing crashes with a traceback.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from blake3 import blake3

from tests.security.conftest import PW, vmkeep
from tests.storage.storage_helpers import backup
from vmkeep.storage.errors import FormatError, StorageError
from vmkeep.storage.manifest import SCHEMA, point_key
from vmkeep.storage.repository import DamagedPoint, Repository

GOOD = {
    "format": "vmkeep-restore-point", "version": 1, "kind": "image", "name": "x",
    "time": "2026-01-01T00:00:00+00:00", "parent": None, "hostname": "h", "disks": [], "meta": {},
}
BAD_HEADERS: dict[str, Any] = {
    "list": [1, 2, 3],
    "string": "a string",
    "name-is-number": GOOD | {"name": 42},
    "disks-is-object": GOOD | {"disks": {"0": {}}},
    "disk-size-is-text": GOOD
    | {"disks": [{"index": 0, "name": "d", "size": "1", "chunk_size": 1}]},
    "naive-time": GOOD | {"time": "2026-01-01T00:00:00"},
    "time-is-number": GOOD | {"time": 1700000000},
    "meta-is-list": GOOD | {"meta": [1]},
    "parent-not-an-id": GOOD | {"parent": {"x": 1}},
    "no-name": {k: v for k, v in GOOD.items() if k != "name"},
}


def plant(repo: Repository, data: bytes) -> str:
    """Store ``data`` as a manifest under its BLAKE3 name (what a writer could do)."""
    point_id = blake3(data).hexdigest()
    repo.backend.put(point_key(point_id), data)
    return point_id


def manifest_with_header(header: Any) -> bytes:
    sink = io.BytesIO()
    schema = SCHEMA.with_metadata({b"vmkeep": json.dumps(header).encode()})
    pq.write_table(schema.empty_table(), sink)
    return sink.getvalue()


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_wrong_header_shape_is_damaged_not_a_crash(
    repo: Repository, image: Path, case: str
) -> None:
    good, _ = backup(repo, image)
    bad = plant(repo, manifest_with_header(BAD_HEADERS[case]))
    damaged: list[DamagedPoint] = []
    assert [p.id for p in repo.list_points(damaged=damaged)] == [good.id]
    assert [d.id for d in damaged] == [bad]
    assert damaged[0].reason
    with pytest.raises(FormatError, match=bad):
        repo.load_point(bad)
    assert repo.resolve("img@latest") == good.id  # NAME@latest skips the damaged point


def test_junk_manifest_is_damaged(repo: Repository, image: Path) -> None:
    good, _ = backup(repo, image)
    bad = plant(repo, os.urandom(3000))
    damaged: list[DamagedPoint] = []
    assert [p.id for p in repo.list_points(damaged=damaged)] == [good.id]
    assert damaged[0].id == bad and "unreadable manifest" in damaged[0].reason


def test_foreign_manifest_in_encrypted_repository_is_skipped(
    tmp_path: Path, image: Path, fast_kdf: int
) -> None:
    mine = Repository.init(str(tmp_path / "mine"), image_chunk_size=64 * 1024, password=PW)
    theirs = Repository.init(str(tmp_path / "theirs"), image_chunk_size=64 * 1024, password=PW)
    good, _ = backup(mine, image)
    foreign, _ = backup(theirs, image, name="foreign")
    shutil.copy(Path(theirs.backend.location, point_key(foreign.id)),
                Path(mine.backend.location, point_key(foreign.id)))
    fresh = Repository.open(mine.backend.location, password=PW)
    damaged: list[DamagedPoint] = []
    assert [p.id for p in fresh.list_points(damaged=damaged)] == [good.id]
    assert damaged[0].id == foreign.id and "authentication failed" in damaged[0].reason
    with pytest.raises(StorageError) as failed:
        fresh.load_point(foreign.id)
    assert failed.value.exit_code == 13


def test_list_cli_reports_damaged_points_and_carries_on(repo: Repository, image: Path) -> None:
    good, _ = backup(repo, image)
    bad = plant(repo, manifest_with_header(BAD_HEADERS["list"]))
    out = vmkeep("list", "--json", repo=repo.backend.location)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [p["id"] for p in listed["points"]] == [good.id]
    assert listed["damaged"][0]["id"] == bad and listed["damaged"][0]["reason"]
    table = vmkeep("list", repo=repo.backend.location)
    assert table.returncode == 0 and "Traceback" not in table.stderr
    assert bad[:8] in table.stdout and "DAMAGED" in table.stdout
    ls = vmkeep("ls", bad[:12], repo=repo.backend.location)
    assert ls.returncode == 13 and bad in ls.stderr and "Traceback" not in ls.stderr
