"""Free space on a repository's target (:mod:`vmkeep.storage.target_space`): read from a real
file system (tmpfs) and an SMB share, warned about by backups below the threshold."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.storage.storage_helpers import write_image
from vmkeep.storage.backend import Backend
from vmkeep.storage.backends.local import LocalBackend
from vmkeep.storage.repository import Repository
from vmkeep.storage.target_space import free_space, space_warnings

MIB = 1 << 20


def test_a_local_target_reports_its_file_systems_space(tmp_path: Path) -> None:
    total, free = LocalBackend(str(tmp_path)).free_space() or (0, 0)
    st = os.statvfs(tmp_path)
    assert total == st.f_blocks * st.f_frsize and 0 < free <= total
    assert LocalBackend(str(tmp_path / "not-yet")).free_space() is None


def test_targets_that_cannot_tell_give_no_figures_and_no_warning() -> None:
    class Blind(Backend):
        location = "s3://bucket/vmkeep"

        def put(self, key: str, data: Any) -> None: ...
        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: return b""
        def size(self, key: str) -> int: return 0
        def list(self, prefix: str) -> Any: return iter(())
        def delete(self, key: str) -> None: ...

    repository = type("R", (), {"backend": Blind()})()
    assert free_space(repository) is None
    assert space_warnings(repository, 10) == []


def _filled(small_fs: Path, keep_free: int) -> Repository:
    repository = Repository.init(str(small_fs / "repo"), image_chunk_size=64 * 1024)
    st = os.statvfs(small_fs)
    filler = st.f_bavail * st.f_frsize - keep_free
    (small_fs / "filler").write_bytes(b"\xff" * max(filler, 0))
    return repository


def test_a_backup_warns_when_the_target_runs_low(
    small_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An 8 MiB tmpfs with 3 MiB free before a backup: below a 50 % threshold after it."""
    from vmkeep.flows.run import run
    from vmkeep.jobs.backup_image import backup_image
    from vmkeep.jobs.specs import BackupImageSpec

    monkeypatch.setenv("VMKEEP_REPO_WARN_FREE_PERCENT", "50")
    repository = _filled(small_fs, keep_free=3 * MIB)
    image = write_image(tmp_path / "disk.img")
    spec = BackupImageSpec(repo=str(small_fs / "repo"), path=str(image), name="web01")
    summary = run(backup_image, spec, orchestrate=False)
    [warning] = summary["warnings"]
    assert warning.startswith(f"repository target {small_fs / 'repo'}: ")
    assert "VMKEEP_REPO_WARN_FREE_PERCENT" in warning
    space = free_space(repository)
    assert space is not None and space["free_percent"] < 50
    assert "below 50 %" in warning
    assert Repository.open(str(small_fs / "repo")).load_point(summary["id"]).meta[
        "warnings"] == [warning]
    monkeypatch.setenv("VMKEEP_REPO_WARN_FREE_PERCENT", "0")  # off
    (small_fs / "filler").unlink()
    quiet = run(backup_image, spec, orchestrate=False)
    assert quiet["warnings"] == []


def test_plenty_of_room_is_no_warning(repo: Repository) -> None:
    space = free_space(repo)
    assert space is not None and space["total"] > 0
    assert space_warnings(repo, 0.0) == []


def test_a_file_backup_lists_the_warning_with_its_file_warnings(
    small_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmkeep.flows.backup_files import backup_files
    from vmkeep.flows.run import run_flow

    monkeypatch.setenv("VMKEEP_REPO_WARN_FREE_PERCENT", "50")
    _filled(small_fs, keep_free=3 * MIB)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "notes.txt").write_text("hello\n" * 1000)
    summary = run_flow(backup_files, False, repo=str(small_fs / "repo"), source=str(tree),
                       name="files")
    [warning] = summary["warnings"]
    assert warning["reason"] == "repository target low on space"
    assert warning["path"] == str(small_fs / "repo") and "below 50 %" in warning["detail"]
