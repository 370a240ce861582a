"""#22: no native thread outlives an error exit.

The intermittent ``terminate called without an active exception`` (exit 134) after a CLI error
that followed loading a point, and the pytest process's segmentation fault in a thread without a
Python frame, share one mechanism: Arrow reads a Parquet object handed to it as a Python file
(``io.BytesIO``) on its own C++ threads (pre-buffering, read-ahead), each read calling back into
Python for the GIL.  A read still in flight when the interpreter finalizes makes that C++ thread
call ``pthread_exit`` from inside the GIL request; the forced unwind through Arrow's ``noexcept``
frames is ``std::terminate``.  vmkeep therefore hands Arrow only Arrow buffers
(``pa.BufferReader``): its threads never need the GIL.

The first test pins that contract in-process, deterministically: every Parquet read vmkeep does on
the paths of a backup, a point load, an index load, ``check`` (with a lost pack, so damaged chunks
are traced to their points) and a file point gets a native Arrow source.  The second loops the CLI
error exits that follow a point load and requires each to end with its own exit code and one line.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.storage.storage_helpers import write_image
from tests.support.run_cli import VMKEEP, cli_env
from vmkeep.storage.checker import check_repository
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.file_manifest import FilePoint, decode_file_point, encode_file_point
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

#: rounds of the CLI error cases (each a fresh process that loaded a point, then failed)
ROUNDS = 4


def _native_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every Parquet reader refuse a Python file object; returns the readers called."""
    called: list[str] = []

    def guard(name: str, original: Any) -> Any:
        def reader(source: Any, *args: Any, **kw: Any) -> Any:
            called.append(name)
            if not isinstance(source, (pa.NativeFile, pa.Buffer, str, os.PathLike)):
                raise AssertionError(f"{name} given a Python file: {type(source).__name__}")
            return original(source, *args, **kw)

        return reader

    for name in ("read_table", "read_schema", "ParquetFile"):
        monkeypatch.setattr(pq, name, guard(name, getattr(pq, name)))
    return called


def test_parquet_is_read_from_arrow_buffers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    called = _native_only(monkeypatch)
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    img = write_image(tmp_path / "a.img", size=1 << 20, seed=8)
    with open(img, "rb") as f:
        point = commit_point(repo, "a", [backup_disk(repo, f, img.stat().st_size)])
    reader = Repository.open(repo.backend.location)
    assert reader.load_point(point.id).id == point.id
    assert len(reader.index) > 0
    prune(reader, dry_run=True)  # marks through iter_blob_ids
    reader.close()
    pack = next(k for k, _ in repo.backend.list("packs"))
    repo.backend.delete(pack)  # check traces the lost chunks to their points
    report = check_repository(Repository.open(repo.backend.location))
    assert not report.ok
    files = FilePoint(name="f", time=datetime(2025, 1, 1, tzinfo=UTC), entries=[])
    point_id, data = encode_file_point(files)
    assert decode_file_point(data, point_id).name == "f"
    assert {"read_table", "read_schema", "ParquetFile"} <= set(called)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VMKEEP, *args],
        capture_output=True,
        text=True,
        env=cli_env(PREFECT_API_URL="", **env),
        timeout=600,
    )


def test_error_exits_after_loading_a_point_are_clean_every_time(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    img = write_image(tmp_path / "a.img", size=4 << 20, seed=9)
    assert _run("init", "-r", str(repo), "--chunk-size", "64").returncode == 0
    made = _run("backup", "image", str(img), "--name", "a", "-r", str(repo), "--no-prefect")
    assert made.returncode == 0, made.stderr
    exists = tmp_path / "exists.img"
    exists.write_bytes(b"x")
    cases = [  # (arguments, exit code): each loads the point (and index) before failing
        (["restore", "image", "latest", "--to", str(exists)], 15),
        (["ls", "latest:nosuchvolume/x"], 14),
        (["restore", "image", "latest", "--disk", "7", "--to", str(tmp_path / "o.img")], 14),
    ]
    for _ in range(ROUNDS):
        for args, code in cases:
            proc = _run(*args, *(["--no-prefect"] if args[0] == "restore" else []), "-r", str(repo))
            assert proc.returncode == code, (args, proc.returncode, proc.stderr[-2000:])
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("vmkeep: "), proc.stderr[-2000:]
