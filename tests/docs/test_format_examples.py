"""Every example of docs/format.md runs as written against repositories vmkeep made.

* Each fenced ``sql`` block runs in DuckDB with the working directory at a plain repository's
  root (the spec says encrypted repositories cannot be read by DuckDB).
* Each fenced ``python`` block runs as a script (``__name__ == "__main__"``) in a plain and an
  encrypted repository's root.  The spec's independent reader (pyarrow, blake3, zstandard and
  cryptography only) must restore every disk and file bit-identically: that proves the spec
  suffices without vmkeep's code.
* The worked example's generator still runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.docs.small_repo import PASSWORD, SmallRepo, build, sha256

duckdb = pytest.importorskip("duckdb")

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "format.md"


def blocks(lang: str) -> list[str]:
    found = re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert found, f"no {lang} examples in {DOC}"
    return found


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SmallRepo]:
    base = tmp_path_factory.mktemp("format")
    out = {
        kind: build(base / kind, encrypted=kind == "encrypted") for kind in ("plain", "encrypted")
    }
    for repo in out.values():  # builds the image point's file-name catalog
        repo.run("find", "a.txt")
    return out


def run_python(block: str, cwd: Path, password: str | None) -> str:
    buf = io.StringIO()
    old = Path.cwd()
    env_before = os.environ.get("VMKEEP_PASSWORD")
    os.chdir(cwd)
    if password:
        os.environ["VMKEEP_PASSWORD"] = password
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(block, str(DOC), "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(old)
        if env_before is None:
            os.environ.pop("VMKEEP_PASSWORD", None)
        else:
            os.environ["VMKEEP_PASSWORD"] = env_before
    return buf.getvalue()


def test_every_sql_example_runs(
    repos: dict[str, SmallRepo], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repos["plain"]
    monkeypatch.chdir(repo.root)
    results = [duckdb.sql(sql).fetchall() for sql in blocks("sql")]
    image_rows, joined = results[0], results[1]
    assert image_rows and all(row[3] is None or len(row[3]) == 64 for row in image_rows)
    assert joined and {row[6] for row in joined} <= {0, 1, 2, 3}  # 2: recipes, 3: units (v4)
    files = next(r for r in results if r and isinstance(r[0][0], str) and r[0][0] == "/")
    assert ("/a.txt", "file", 13000, 1) in files


def test_first_sql_example_reads_the_image_point(
    repos: dict[str, SmallRepo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first example's rows are the image point's first chunks, as Parquet stores them."""
    repo = repos["plain"]
    monkeypatch.chdir(repo.root)
    got = duckdb.sql(blocks("sql")[0]).fetchall()
    table = pq.read_table(f"manifests/{repo.points['img']}.parquet").to_pylist()[: len(got)]
    want = [
        (r["disk"], r["offset"], r["length"], r["blob_id"] and r["blob_id"].hex()) for r in table
    ]
    assert got == want


@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_python_examples_restore_bit_identically(repos: dict[str, SmallRepo], kind: str) -> None:
    repo = repos[kind]
    out = "".join(
        run_python(block, repo.root, PASSWORD if repo.encrypted else None)
        for block in blocks("python")
        if kind == "plain" or "VMKEEP_PASSWORD" in block
    )
    disk = f"{repo.points['img']} disk 0 {sha256(repo.image)}"
    assert disk in out.splitlines()
    if not repo.encrypted:  # the reader followed compression units (version 4), not only blobs
        codecs = {
            c for path in (repo.root / "index").glob("*.parquet")
            for c in pq.read_table(path).column("codec").to_pylist()
        }
        assert 3 in codecs
    for rel in ("a.txt", "sub/hard", "big.bin", "empty"):
        line = f"{repo.points['files']} file /{rel} {sha256(repo.source / rel)}"
        assert line in out.splitlines(), (line, out)


def test_encrypted_repository_is_not_parquet(
    repos: dict[str, SmallRepo], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the spec says: DuckDB cannot read an encrypted repository's manifests."""
    monkeypatch.chdir(repos["encrypted"].root)
    with pytest.raises(duckdb.Error):
        duckdb.sql(blocks("sql")[0]).fetchall()


def test_worked_example_generator_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "make_format_examples.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PREFECT_API_URL=""),
    )
    assert done.returncode == 0, done.stderr
    assert "VMKPEND3" in done.stdout and "VMKPENC3" in done.stdout  # version 4: units
    assert '"encrypt"' in done.stdout and '"hash_key"' in done.stdout
    doc = DOC.read_text()
    assert "<!-- worked example -->" in doc and "<!-- end of worked example -->" in doc


def test_no_source_references() -> None:
    """The spec stands alone: it never sends the reader to vmkeep's source files."""
    assert not re.search(r"vmkeep/[a-z_/]+\.py|\bstorage/[a-z_]+\.py", DOC.read_text())
