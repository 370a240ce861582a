"""Restores killed at deterministic points re-run to complete, byte-correct files (#24 item 4).

``tests.security.crash_runner`` runs the real CLI and SIGKILLs itself at the N-th call of a
restore step (no sleep-then-kill).  After each kill: nothing under a final name is partial; the
re-run exits 0, every file is complete and correct, and no ``vmkeep-part`` temporary is left.
Also: ``restore image`` refuses device nodes, FIFOs and existing files (without
``--overwrite``) and gives one-line typed errors for a missing or read-only target folder;
refusals that lose data end with exit 3; 3,000 files restore under ``ulimit -n 1024``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guestfiles.files_helpers import licence_env
from tests.restore.restore_helpers import vmkeep
from tests.storage.storage_helpers import backup as backup_image_file
from vmkeep.flows.backup_files import backup_files
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

FILES, FILE_SIZE = 200, 128 * 1024
PART = "vmkeep-part-"


def crash(hook: str, nth: int, *args: str, repo: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=repo)
    return subprocess.run(
        [sys.executable, "-m", "tests.security.crash_runner", hook, str(nth), *args],
        capture_output=True,
        text=True,
        env=env,
    )


def hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256} of regular files, temporaries excluded."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and PART not in p.name
    }


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if PART in p.name]


@pytest.fixture(scope="module")
def file_point(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A file restore point of 200 × 128 KiB random files in 4 folders."""
    base = tmp_path_factory.mktemp("crash-files")
    src = base / "src"
    rng = random.Random(24)
    for i in range(FILES):
        path = src / f"d{i % 4}" / f"f{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(FILE_SIZE))
    repo = base / "repo"
    Repository.init(str(repo))
    with pytest.MonkeyPatch.context() as mp:
        licence_env(mp)
        out = run_flow(backup_files, False, repo=str(repo), source=str(src), name="crash")
    yield {"repo": str(repo), "src": src, "id": out["id"], "hashes": hashes(src)}


@pytest.mark.parametrize(
    ("hook", "nth"),
    [("flush", 1), ("range", 1), ("publish", 1), ("publish", 120), ("publish", FILES)],
)
def test_killed_file_restore_reruns_to_complete_files(
    file_point: dict[str, Any], tmp_path: Path, hook: str, nth: int
) -> None:
    target = tmp_path / "out"
    args = ("restore", "files", f"{file_point['id'][:12]}:/", "--to", str(target))
    killed = crash(hook, nth, *args, repo=file_point["repo"])
    assert killed.returncode == -9, killed.stderr
    partial = hashes(target)
    for rel, digest in partial.items():  # whatever has a final name is whole
        assert digest == file_point["hashes"][rel], rel
    if hook == "publish":
        assert len(partial) == nth - 1
    else:
        assert partial == {} and leftovers(target)  # only temporaries so far
    again = vmkeep(*args, "--json", repo=file_point["repo"])
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["ok"] and out["files"] == FILES - len(partial)
    assert {w["reason"] for w in out["skipped"]} <= {"exists"}
    assert len(out["skipped"]) == len(partial)
    assert hashes(target) == file_point["hashes"]
    assert leftovers(target) == []


def test_temporaries_of_a_live_restore_are_kept(file_point: dict[str, Any], tmp_path: Path):
    """Only temporaries whose writer is gone are removed (this process is alive)."""
    from vmkeep.storage.partial_files import part_name

    target = tmp_path / "out"
    (target / "d0").mkdir(parents=True)
    live = target / "d0" / part_name()
    live.write_bytes(b"still being written")
    dead = target / "d0" / part_name().replace(f"-{os.getpid()}-", "-999999999-")
    dead.write_bytes(b"left by a killed run")
    proc = vmkeep("restore", "files", f"{file_point['id'][:12]}:/", "--to", str(target),
                  repo=file_point["repo"])
    assert proc.returncode == 0, proc.stderr
    assert live.exists() and not dead.exists()


# --- restore image ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_point(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("crash-image")
    img = base / "disk.img"
    rng = random.Random(7)
    img.write_bytes(rng.randbytes(3 << 20) + bytes(1 << 20) + rng.randbytes(1 << 20))
    repo = Repository.init(str(base / "repo"), image_chunk_size=64 * 1024)
    point, _ = backup_image_file(repo, img, name="disk")
    return {"repo": str(base / "repo"), "id": point.id, "bytes": img.read_bytes()}


@pytest.mark.parametrize(("hook", "nth"), [("extent", 1), ("extent", 5), ("replace", 1)])
@pytest.mark.parametrize("existing", [False, True])
def test_killed_image_restore_reruns_to_a_complete_image(
    image_point: dict[str, Any], tmp_path: Path, hook: str, nth: int, existing: bool
) -> None:
    out = tmp_path / "disk.raw"
    if existing:
        out.write_bytes(b"the previous image")
    args = ["restore", "image", image_point["id"][:12], "--to", str(out)]
    if existing:
        args.append("--overwrite")
    killed = crash(hook, nth, *args, repo=image_point["repo"])
    assert killed.returncode == -9, killed.stderr
    # the target is untouched (absent, or the previous image), the partial data is a temporary
    assert out.exists() == existing
    if existing:
        assert out.read_bytes() == b"the previous image"
    assert [p.name for p in leftovers(tmp_path)]
    again = vmkeep(*args, repo=image_point["repo"])
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == image_point["bytes"]
    assert leftovers(tmp_path) == []


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("kind", ["block", "char", "fifo"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_restore_image_never_replaces_a_special_file(
    image_point: dict[str, Any], tmp_path: Path, kind: str, overwrite: bool
) -> None:
    node = tmp_path / "node"
    try:
        if kind == "fifo":
            os.mkfifo(node)
        else:  # a loop device number that is never opened: only the node's type matters
            mode, dev = (stat.S_IFBLK, (7, 250)) if kind == "block" else (stat.S_IFCHR, (1, 3))
            os.mknod(node, mode | 0o600, os.makedev(*dev))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    before = os.lstat(node)
    args = ["restore", "image", image_point["id"][:12], "--to", str(node)]
    proc = vmkeep(*args, *(["--overwrite"] if overwrite else []), repo=image_point["repo"])
    assert "not a regular file" in one_line_error(proc, 15)
    after = os.lstat(node)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)
    assert after.st_ino == before.st_ino and after.st_rdev == before.st_rdev
    assert leftovers(tmp_path) == []


def test_restore_image_keeps_an_existing_file_without_overwrite(
    image_point: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "disk.raw"
    out.write_bytes(b"keep me")
    args = ["restore", "image", image_point["id"][:12], "--to", str(out)]
    assert "--overwrite" in one_line_error(vmkeep(*args, repo=image_point["repo"]), 15)
    assert out.read_bytes() == b"keep me"
    proc = vmkeep(*args, "--overwrite", repo=image_point["repo"])
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == image_point["bytes"]


def test_restore_image_vmdk_keeps_an_existing_descriptor(
    image_point: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "disk.vmdk"
    out.write_text("# somebody's descriptor\n")
    args = ["restore", "image", image_point["id"][:12], "--to", str(out), "--format", "vmdk"]
    one_line_error(vmkeep(*args, repo=image_point["repo"]), 15)
    assert out.read_text() == "# somebody's descriptor\n"
    assert not (tmp_path / "disk-flat.vmdk").exists()


def test_restore_image_missing_folder_is_a_typed_error(
    image_point: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "no" / "such" / "disk.raw"
    args = ["restore", "image", image_point["id"][:12], "--to", str(out)]
    assert "does not exist" in one_line_error(vmkeep(*args, repo=image_point["repo"]), 15)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write: a read-only tmpfs as root, else mode 0555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr!r}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_restore_image_unwritable_folder_is_a_typed_error(
    image_point: dict[str, Any], read_only_folder: Path
) -> None:
    args = ["restore", "image", image_point["id"][:12], "--to", str(read_only_folder / "d.raw")]
    assert "permission denied" in one_line_error(vmkeep(*args, repo=image_point["repo"]), 15)


# --- refusals that lose data, descriptor limits ------------------------------------------------


def test_data_losing_refusals_end_with_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A name shaped like vmkeep's temporaries and a subtree behind a link planted in the target
    are refused, listed, and make the restore incomplete (exit 3, ``"ok": false``)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "inner.txt").write_text("inner\n")
    (src / ".vmkeep-part-0123abcd-1-0123456789abcdef").write_text("guest data\n")
    (src / "fine.txt").write_text("fine\n")
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    licence_env(monkeypatch)
    point = run_flow(backup_files, False, repo=str(repo), source=str(src), name="evil")["id"]
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "sub").symlink_to(outside)  # planted link where a folder will be restored
    proc = vmkeep("restore", "files", f"{point[:12]}:/", "--to", str(target), "--json", repo=repo)
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["errors"] == 2
    reasons = {(w["path"], w["reason"]) for w in out["skipped"]}
    assert ("/.vmkeep-part-0123abcd-1-0123456789abcdef", "unsafe-name") in reasons
    assert ("/sub", "not-a-directory") in reasons
    assert list(outside.iterdir()) == []
    assert (target / "fine.txt").read_text() == "fine\n"


def test_restore_of_3000_files_under_ulimit_1024(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "src"
    for i in range(3000):
        path = src / f"d{i % 10}" / f"f{i:04d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d\n" % i * 50)
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    licence_env(monkeypatch)
    point = run_flow(backup_files, False, repo=str(repo), source=str(src), name="many")["id"]
    target = tmp_path / "out"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(repo))
    proc = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "restore", "files", f"{point[:12]}:/", "--to",
         str(target), "--json"],
        capture_output=True, text=True, env=env, preexec_fn=limit,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["ok"] and out["files"] == 3000 and out["skipped"] == []
    assert hashes(target) == hashes(src)


@pytest.fixture(scope="module")
def ext4_point(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An image restore point of a bare ext4 holding 40 × 64 KiB random files."""
    base = tmp_path_factory.mktemp("crash-ext4")
    src = base / "src" / "data"
    src.mkdir(parents=True)
    rng = random.Random(4)
    for i in range(40):
        (src / f"f{i:02d}.bin").write_bytes(rng.randbytes(64 * 1024))
    img = base / "ext4.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(base / "src"), str(img), "16M"],
                   check=True)
    repo = Repository.init(str(base / "repo"), image_chunk_size=64 * 1024)
    point, _ = backup_image_file(repo, img, name="ext4")
    return {"repo": str(base / "repo"), "id": point.id, "hashes": hashes(base / "src")}


@pytest.mark.parametrize("nth", [1, 25])
def test_killed_restore_from_an_image_point_reruns_to_complete_files(
    ext4_point: dict[str, Any], tmp_path: Path, nth: int
) -> None:
    """Image and VM points go through the unbatched writer: same guarantee."""
    target = tmp_path / "out"
    args = ("restore", "files", f"{ext4_point['id'][:12]}:whole/data", "--to", str(target))
    killed = crash("publish", nth, *args, repo=ext4_point["repo"])
    assert killed.returncode == -9, killed.stderr
    partial = hashes(target)
    assert len(partial) == nth - 1 and leftovers(target)
    for rel, digest in partial.items():
        assert digest == ext4_point["hashes"][rel], rel
    again = vmkeep(*args, "--json", repo=ext4_point["repo"])
    assert again.returncode == 0, again.stderr
    assert hashes(target) == ext4_point["hashes"] and leftovers(target) == []


def test_restore_files_into_an_impossible_folder_is_a_typed_error(
    file_point: dict[str, Any], read_only_folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("x")
    for target in (read_only_folder / "sub", tmp_path / "a-file"):
        proc = vmkeep("restore", "files", f"{file_point['id'][:12]}:/", "--to", str(target),
                      repo=file_point["repo"])
        assert "Cannot restore to" in one_line_error(proc, 15)


def test_image_temporaries_of_older_vmkeep_are_removed_once_old(
    image_point: dict[str, Any], tmp_path: Path
) -> None:
    """Before #24 a killed ``restore image`` left ``.NAME.vmkeep-XXXXXXXX`` forever."""
    old = tmp_path / ".disk.raw.vmkeep-0badc0de"
    recent = tmp_path / ".disk.raw.vmkeep-0123abcd"
    other = tmp_path / ".other.raw.vmkeep-0badc0de"
    for p in (old, recent, other):
        p.write_bytes(b"partial")
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    os.utime(other, (day_ago, day_ago))
    proc = vmkeep("restore", "image", image_point["id"][:12], "--to", str(tmp_path / "disk.raw"),
                  repo=image_point["repo"])
    assert proc.returncode == 0, proc.stderr
    assert not old.exists() and recent.exists() and other.exists()
