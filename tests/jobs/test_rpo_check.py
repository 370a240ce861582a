"""``vmkeep rpo`` / the ``rpo-check`` job: every backup name's newest restore point against the
recovery point objective, in one or several repositories; a run that finds one too old fails,
so its job report names it."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.servers.notify_servers import Webhook, webhook
from tests.support.run_cli import TEST_NOW, VMKEEP, cli_env

__all__ = ["webhook"]  # fixture


def vmkeep(*args: str, at: datetime | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    extra = {TEST_NOW: at.isoformat()} if at else {}
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, timeout=600,
                          env=cli_env(PREFECT_API_URL="", **extra, **env))


def backed_up(repo: Path, names: list[str], tmp_path: Path, at: datetime) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 16))
    for name in names:
        done = vmkeep("backup", "image", str(image), "--name", name, at=at,
                      VMKEEP_REPO=str(repo))
        assert done.returncode == 0, done.stderr


@pytest.fixture
def now() -> datetime:
    return datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def repos(tmp_path: Path, now: datetime) -> tuple[Path, Path]:
    lan, san = tmp_path / "lan", tmp_path / "san"
    for repo in (lan, san):
        assert vmkeep("init", VMKEEP_REPO=str(repo)).returncode == 0
    backed_up(lan, ["web01"], tmp_path, now - timedelta(hours=30))  # missed the night
    backed_up(lan, ["web01", "db01"], tmp_path, now - timedelta(hours=50))
    backed_up(lan, ["db01"], tmp_path, now - timedelta(hours=2))
    backed_up(san, ["sql01"], tmp_path, now - timedelta(hours=3))
    backed_up(lan, ["sql01"], tmp_path, now - timedelta(hours=40))  # before it moved to the SAN
    backed_up(san, ["old-vm"], tmp_path, now - timedelta(days=90))  # retired
    return lan, san


def test_names_whose_newest_point_is_too_old_fail_the_check(
    repos: tuple[Path, Path], now: datetime
) -> None:
    lan, san = repos
    run = vmkeep("rpo", "--also", str(san), "--json", at=now, VMKEEP_REPO=str(lan))
    assert run.returncode == 1, run.stderr
    summary = json.loads(run.stdout)
    assert [(r["name"], r["age_hours"]) for r in summary["missed"]] == [
        ("old-vm", 2160.0), ("web01", 30.0)]
    assert [(r["name"], r["age_hours"]) for r in summary["met"]] == [
        ("db01", 2.0), ("sql01", 3.0)]
    assert summary["checked"] == 4
    assert "2 of 4 backup name(s) have no restore point newer than 26 h: old-vm (2160 h), " \
           "web01 (30 h)" in run.stderr


def test_retired_names_are_excluded_and_the_objective_is_the_users(
    repos: tuple[Path, Path], now: datetime
) -> None:
    lan, san = repos
    run = vmkeep("rpo", "--also", str(san), "--exclude", "old-*", "--max-age", "36",
                 at=now, VMKEEP_REPO=str(lan))
    assert run.returncode == 0, run.stderr
    assert "4 of 4" not in run.stderr and "3 of 3 backup names within 36 h" in run.stderr
    assert "ok      web01  newest " in run.stdout


def test_a_watched_name_without_any_point_is_missed(
    repos: tuple[Path, Path], now: datetime
) -> None:
    lan, _ = repos
    run = vmkeep("rpo", "--name", "web*", "--name", "exchange01", "--json", at=now,
                 VMKEEP_REPO=str(lan))
    assert run.returncode == 1
    missed = json.loads(run.stdout)["missed"]
    assert [(r["name"], r["point"]) for r in missed] == [("exchange01", None), ("web01",
                                                          missed[1]["point"])]
    assert "exchange01 (no point)" in run.stderr


def test_a_damaged_manifest_is_a_warning_not_a_blind_spot(
    repos: tuple[Path, Path], now: datetime
) -> None:
    lan, _ = repos
    listed = json.loads(vmkeep("list", "--json", VMKEEP_REPO=str(lan)).stdout)["points"]
    web01 = next(p["id"] for p in listed if p["name"] == "web01")  # excluded: only the warning
    manifest = lan / "manifests" / f"{web01}.parquet"
    manifest.write_bytes(b"not a manifest")
    run = vmkeep("rpo", "--exclude", "web01", "--exclude", "sql01", at=now, VMKEEP_REPO=str(lan))
    assert run.returncode == 0, run.stderr
    assert f"point {manifest.stem[:8]} damaged" in run.stderr


def test_the_scheduled_check_reports_what_it_missed(
    prefect_api: str, repos: tuple[Path, Path], now: datetime, webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vmkeep import clock
    from vmkeep.flows.rpo_check import rpo_check
    from vmkeep.flows.run import run_flow
    from vmkeep.jobs.rpo_check import RpoMissed

    lan, san = repos
    monkeypatch.setenv("VMKEEP_NOTIFY", webhook.url())
    with clock.frozen(now), pytest.raises(RpoMissed):
        run_flow(rpo_check, orchestrate=True, repos=[str(lan), str(san), ""],
                 max_age_hours=26)
    [post] = webhook.posts
    assert post["title"].startswith("[Failed] vmkeep rpo-check 26 h on ")
    message: Any = post["message"]
    assert "2 of 4 backup name(s) have no restore point newer than 26 h" in message
    assert "  missed: 2" in message and "name=web01" in message
