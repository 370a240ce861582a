"""Finding 3: `check` (with and without --read-data) catches every forged index entry.

An attacker with write access to the repository rewrites an index file so that one entry points
past its pack's end, into another pack's header, claims lengths of 2^32-1 or an unknown codec.
Restores of the point then fail (exit 13); `check` must report the entry (exit 13) instead of
``{"ok": true}``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from blake3 import blake3

from tests.security.conftest import vmkeep
from tests.storage.storage_helpers import backup
from vmkeep.errors import VmkeepError
from vmkeep.storage.checker import check_repository
from vmkeep.storage.disk_restore import restore_disk
from vmkeep.storage.index import SCHEMA, decode_index
from vmkeep.storage.pack import pack_id_from_key
from vmkeep.storage.repository import Repository

U32 = 2**32 - 1


def forge_index(repo: Repository, change: Any) -> bytes:
    """Rewrite the repository's index files: the first entry of the first file is replaced by
    ``change(entry, packs)`` (``packs``: id -> size).  Returns the forged entry's blob id."""
    packs = {pack_id_from_key(k): s for k, s in repo.backend.list("packs")}
    keys = sorted(k for k, _ in repo.backend.list("index"))
    table = decode_index(repo.backend.get(keys[0]), keys[0])
    rows = table.to_pylist()
    rows[0] = change(dict(rows[0]), packs)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), sink)
    data = sink.getvalue()
    repo.backend.delete(keys[0])
    repo.backend.put(f"index/{blake3(data).hexdigest()}.parquet", data)
    return bytes(rows[0]["blob_id"])


def past_end(e: dict[str, Any], packs: dict[bytes, int]) -> dict[str, Any]:
    return e | {"offset": packs[e["pack_id"]] + 100}


def other_pack_header(e: dict[str, Any], packs: dict[bytes, int]) -> dict[str, Any]:
    other = next(p for p in sorted(packs) if p != e["pack_id"])
    return e | {"pack_id": other, "offset": 0}


def stored_max(e: dict[str, Any], packs: dict[bytes, int]) -> dict[str, Any]:
    return e | {"stored_length": U32}


def raw_max(e: dict[str, Any], packs: dict[bytes, int]) -> dict[str, Any]:
    return e | {"raw_length": U32}


def unknown_codec(e: dict[str, Any], packs: dict[bytes, int]) -> dict[str, Any]:
    return e | {"codec": 7}


FORGERIES = [past_end, other_pack_header, stored_max, raw_max, unknown_codec]


@pytest.mark.parametrize("forgery", FORGERIES, ids=lambda f: f.__name__)
def test_check_reports_forged_index_entry(
    repo: Repository, image: Path, tmp_path: Path, forgery: Any
) -> None:
    point, _ = backup(repo, image)
    assert len(list(repo.backend.list("packs"))) >= 2
    blob_id = forge_index(repo, forgery)
    fresh = Repository.open(repo.backend.location)
    for read_data in (False, True):
        report = check_repository(fresh, read_data=read_data)
        assert not report.ok, f"read_data={read_data}"
        bad = [p for p in report.problems if p.kind == "bad-index"]
        assert bad and any(blob_id.hex()[:16] in p.detail for p in bad)
        assert point.id in {a["point"] for p in report.problems for a in p.affected}
    with pytest.raises(VmkeepError) as failed:
        restore_disk(fresh, fresh.load_point(point.id), 0, str(tmp_path / "out.img"))
    assert failed.value.exit_code == 13


def test_check_cli_exits_13_on_forged_index(repo: Repository, image: Path) -> None:
    backup(repo, image)
    forge_index(repo, past_end)
    for extra in ((), ("--read-data",)):
        out = vmkeep("check", "--json", *extra, repo=repo.backend.location)
        assert out.returncode == 13, out.stderr
        report = json.loads(out.stdout)
        assert report["ok"] is False
        assert "bad-index" in {p["kind"] for p in report["problems"]}


def test_clean_repository_still_checks_clean(repo: Repository, image: Path) -> None:
    backup(repo, image)
    backup(repo, image, name="again")
    fresh = Repository.open(repo.backend.location)
    assert check_repository(fresh).ok
    assert check_repository(fresh, read_data=True).ok
