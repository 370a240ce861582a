"""#22: no native thread outlives an error exit.

The intermittent ``terminate called without an active exception`` (exit 134) after a CLI error
that followed loading a point comes from Arrow's own worker threads.  ``pq.read_table`` is a
dataset scan that runs on Arrow's thread pools even with ``use_threads=False``; after it returned,
a worker may still be completing the scan's futures and drop the last reference to the scan's
``FileSource``, whose ``BufferReader`` wraps a Python object (``arrow::py::PyBuffer``, for
``io.BytesIO`` and ``pa.BufferReader(bytes)`` alike).  Its destructor takes the GIL; when the
interpreter is finalizing, ``take_gil`` ends that C++ thread with ``pthread_exit``, whose forced
unwind through Arrow's ``noexcept`` frames is ``std::terminate`` (core dump, gdb: ``~PyBuffer`` ←
``~BufferReader`` ← ``~FileSource`` ← ``~ParquetFileFragment`` ← ``AsyncScanner`` callback on a
``ThreadPool`` worker, main thread in ``Py_FinalizeEx``).  A plain pyarrow script doing
``pq.read_table`` ×200 then ``sys.exit`` aborts about once in 150–300 runs under load.  vmkeep
therefore decodes its Parquet objects (manifests, index files, catalogs) on the calling thread
(``pq.ParquetFile(pa.BufferReader(data))`` with ``use_threads=False``) and runs Acero
``group_by``/``join`` with ``use_threads=False``: Arrow starts no worker thread, so nothing native
is alive at exit and every Arrow object is released on a thread that holds the GIL.

The first test pins that contract deterministically: a process that loads a point and the index,
runs ``check --read-data``, a dry-run prune, ``stats`` and decodes a file point has no thread
besides Python's own and jemalloc's.  The second pins the readers' sources in-process; the third
loops the CLI error exits that follow a point load and requires each to end with its own exit
code and one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


PROBE = """
import json, os, sys, threading
from datetime import UTC, datetime
from vmkeep.storage.checker import check_repository
from vmkeep.storage.file_manifest import FilePoint, decode_file_point, encode_file_point
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository
from vmkeep.storage.stats import repository_stats


def native_threads():
    tasks = os.listdir("/proc/self/task")
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
    return len(names) - threading.active_count() - names.count("jemalloc_bg_thd")


repo = Repository.open(sys.argv[1])
repo.load_point(repo.list_points()[-1].id)
assert len(repo.index) > 0
assert check_repository(repo, read_data=True).ok
prune(repo, dry_run=True)
repository_stats(repo)
point_id, data = encode_file_point(FilePoint(name="f", time=datetime(2025, 1, 1, tzinfo=UTC)))
decode_file_point(data, point_id)
repo.close()
again = Repository.open(sys.argv[1])  # the index again: from the local index cache (#23)
assert again.index_cache() is not None and len(again.load_index()) > 0
again.close()
print(json.dumps({"native_threads": native_threads()}))
"""


def test_reading_a_repository_starts_no_native_thread(tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    img = write_image(tmp_path / "a.img", size=2 << 20, seed=7)
    for _ in range(2):
        with open(img, "rb") as f:
            commit_point(repo, "a", [backup_disk(repo, f, img.stat().st_size)])
    repo.close()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, repo.backend.location],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"native_threads": 0}


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
    assert {"read_schema", "ParquetFile"} <= set(called)


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
