"""The scheduled maintenance flows in direct mode against lab backups: verify (check plus a test
restore per VM; fails loudly on a damaged pack), retention (forget by keep rules per VM, prune),
licence report (usage counted from the repositories, never refusing)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.licence_report import licence_report
from vmkeep.flows.retention import retention
from vmkeep.flows.run import run_flow
from vmkeep.flows.verify import VerifyFailed, parse_subset, verify
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab


def test_subset_rotates_by_week() -> None:
    assert parse_subset("2/7") == (2, 7)
    assert 1 <= parse_subset("*/7")[0] <= 7
    with pytest.raises(ValueError):
        parse_subset("8/7")


def test_verify_retention_and_licence_report(
    lab_env: dict[str, Any], staged_repo: str, tmp_path: Path
) -> None:
    repo = staged_repo
    # small05/06: kept clean (no blind random writes) — the verification restores their files
    first = run_flow(backup_vm, False, repo=repo, vm="small05", **lab_env)
    second = run_flow(backup_vm, False, repo=repo, vm="small05", **lab_env)
    run_flow(backup_vm, False, repo=repo, vm="small06", **lab_env)

    result = run_flow(verify, False, repo=repo, subset="1/1")
    assert result["check"]["ok"] and result["check"]["bytes_read"] > 0
    assert sorted(r["vm"] for r in result["restores"]) == ["small05", "small06"]
    assert all(r["ok"] and r["file"] for r in result["restores"])
    assert {r["point"] for r in result["restores"]} >= {second["short_id"]}

    report = run_flow(licence_report, False, repos=[repo, ""])
    assert report["compliant"] and report["allowed"]

    kept = run_flow(retention, False, repo=repo, keep_last=1, keep_daily=0, keep_weekly=0,
                    keep_monthly=0, grace="0s")
    assert [p["id"] for p in kept["forgotten"]] == [first["id"]]
    assert kept["prune"]["points"] == 2
    assert {p.id for p in Repository.open(repo).list_points()} == {
        second["id"], *(p["id"] for p in kept["kept"])}

    pack = next(p for p in (Path(repo) / "packs").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(pack, 0o644)
    pack.write_bytes(bytes(data))
    with pytest.raises(VerifyFailed, match="check"):
        run_flow(verify, False, repo=repo, subset="1/1")
