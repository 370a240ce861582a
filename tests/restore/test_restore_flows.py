"""The restore jobs in-process: chunk-fetch accounting, file points dispatched to the file-point
restore, and a restore run through a real Prefect server (visible in the UI, readable names)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time

import pytest

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import run_cli, tree_hashes, vmkeep_json
from vmkeep.browse.local import restore_image_paths
from vmkeep.browse.point import PointImage
from vmkeep.flows.backup_image import backup_image
from vmkeep.flows.restore_files import restore_files
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def files_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, bytes]]:
    """A 96 MiB ext4 holding several incompressible files; backed up with 64 KiB chunks."""
    root = tmp_path_factory.mktemp("fetch")
    tree = root / "tree"
    rnd = random.Random(7)
    files = {f"f{i}.bin": rnd.randbytes(6 * 2**20) for i in range(6)}
    files["target.bin"] = rnd.randbytes(8 * 2**20 + 4321)
    for name, data in files.items():
        p = tree / "dir" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    img = root / "fs.img"
    b.run("mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, img, "96M")
    repo = root / "repo"
    Repository.init(str(repo), image_chunk_size=CHUNK)
    run_flow(backup_image, False, repo=str(repo), path=str(img), name="fetch")
    return str(repo), files


def test_restoring_one_file_reads_about_its_size(files_image, tmp_path):
    repo, files = files_image
    size = len(files["target.bin"])
    repository = Repository.open(repo)
    with PointImage.open(repository, "fetch@latest") as img:
        img.filesystem("whole").listdir("/dir")  # browsing costs a few metadata chunks
        browse_fetches = img.fetches
        summary = restore_image_paths(img, [("whole", "/dir/target.bin")], str(tmp_path))
    assert summary.ok and summary.files == 1
    assert (tmp_path / "target.bin").read_bytes() == files["target.bin"]
    fetched = summary.chunks_fetched * CHUNK
    assert browse_fetches * CHUNK < 2**20
    assert size <= fetched <= size + 2**20, (fetched, size)  # not the 96 MiB disk


def test_first_byte_and_flow_summary(files_image, tmp_path):
    repo, files = files_image
    # The first byte (its latency is a benchmark figure, bench/, not a test assertion: a test
    # may not depend on the machine's speed; that only the file's chunks are read is asserted
    # by chunk counts above).
    repository = Repository.open(repo)
    with PointImage.open(repository, "fetch@latest") as img:
        first = img.filesystem("whole").open("/dir/f3.bin").read(1)
    assert first == files["f3.bin"][:1]
    out = run_flow(
        restore_files,
        False,
        repo=repo,
        point="fetch@latest",
        paths=["whole/dir/f1.bin"],
        target=str(tmp_path),
    )
    assert out["ok"] and out["kind"] == "image" and out["files"] == 1
    assert out["chunks_fetched"] * CHUNK <= len(files["f1.bin"]) + 2**20


def test_file_points_go_through_the_file_point_restore(tmp_path, dev_licence):
    from vmkeep.flows.backup_files import backup_files

    src = tmp_path / "src"
    b.make_tree(src)
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    run_flow(backup_files, False, repo=str(repo), source=str(src), name="host1")
    out = run_flow(
        restore_files,
        False,
        repo=str(repo),
        point="host1@latest",
        paths=["/deep", "/hello.txt"],
        target=str(tmp_path / "out"),
    )
    assert out["kind"] == "files" and out["errors"] == 0
    assert (tmp_path / "out/deep/a/b/c/file.txt").read_bytes() == b"deep file\n" * 100
    assert (tmp_path / "out/hello.txt").read_bytes() == b"hello world\n"
    # ls and find see file points too (their manifest lists every path: no catalog needed)
    listed = vmkeep_json("ls", "host1@latest:/deep/a", repo=repo)
    assert [(r["name"], r["type"]) for r in listed["entries"]] == [("b", "dir")]
    found = vmkeep_json("find", "file.txt", repo=repo)
    assert [m["ref"].split(":", 1)[1] for m in found["matches"]] == ["/deep/a/b/c/file.txt"]
    assert found["catalogs_built"] == [] and not (repo / "catalog").exists()


def test_restore_flow_is_visible_in_prefect(prefect_api, files_image, tmp_path):
    """``restore files --prefect`` in a fresh process, as a user runs it (a long pytest process
    may hold a Prefect events client bound to a server an earlier test stopped)."""
    import subprocess
    import sys

    from tests.support.run_cli import cli_env

    repo, files = files_image
    env = cli_env(PREFECT_API_URL=prefect_api, VMKEEP_REPO=repo)
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.run_cli", "restore", "files",
         "fetch@latest:whole/dir", "--to", str(tmp_path), "--prefect", "--json"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["ok"] and out["files"] == len(files)
    want = {f"dir/{n}": hashlib.sha256(d).hexdigest() for n, d in files.items()}
    assert tree_hashes(tmp_path) == want

    from prefect.client.orchestration import get_client

    async def inspect() -> tuple[set[str], set[str], set[str], set[str]]:
        # filtered by name: the session's server holds every other test's runs too (a plain
        # read returns only the first page)
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterKey,
            FlowFilter,
            FlowFilterName,
            TaskRunFilter,
            TaskRunFilterName,
        )

        async with get_client() as client:
            flows = await client.read_flows(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["restore-files"])))
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["restore-files"])))
            tasks = await client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=f"to {tmp_path}")))
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["restore-files"])))
        return (
            {f.name for f in flows},
            {r.name for r in runs},
            {t.name for t in tasks},
            {a.key or "" for a in artifacts},
        )

    deadline = time.monotonic() + 300  # task runs reach the server through events, later
    while True:
        flows, runs, tasks, artifacts = asyncio.run(inspect())
        if tasks or time.monotonic() > deadline:
            break
        time.sleep(1)
    # readable: the run names the point and the target, the step the paths and the target
    assert "restore-files" in flows
    assert any(r.startswith(f"restore-files fetch@latest to {tmp_path} ") for r in runs), runs
    assert tasks == {f"files whole/dir to {tmp_path}"}, tasks
    assert "restore-files" in artifacts
    assert os.path.exists(tmp_path / "dir/target.bin")


def test_missing_data_is_a_partial_restore_with_exit_code_3(files_image, tmp_path):
    import shutil

    from vmkeep.storage.pack import pack_key

    repo = tmp_path / "damaged"
    shutil.copytree(files_image[0], repo)
    repository = Repository.open(str(repo))
    point = repository.load_point("fetch@latest")
    with PointImage(repository, point) as img:
        stream = img.filesystem("whole").open("/dir/target.bin")
        runlist = stream.inner.runlist  # type: ignore[attr-defined]
        offset = runlist[-1][0] * stream.inner.block_size  # type: ignore[attr-defined]
    table = point.chunks[0]

    def pack_of(chunk: int) -> bytes:
        return repository.index.get(table.blob_id(chunk)).pack_id

    lost = pack_of(offset // CHUNK)
    if lost == pack_of(0):
        pytest.skip("file data and file-system metadata share a pack here")
    (repo / pack_key(lost)).unlink()  # some file data is gone, the metadata is not
    code, out, err = run_cli(
        "restore",
        "files",
        "fetch@latest:whole/dir",
        "--to",
        str(tmp_path / "out"),
        "--json",
        repo=repo,
    )
    assert code == 3, err
    summary = json.loads(out)
    assert not summary["ok"] and summary["errors"] >= 1
    assert {w["reason"] for w in summary["skipped"]} == {"read-error"}
    assert summary["files"] + summary["errors"] == 7  # the rest came back
    assert "Restore finished, but" in err
