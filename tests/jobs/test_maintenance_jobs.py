"""The maintenance jobs (#19): verify, retention, prune, licence report — specs refused before a
run, and the jobs run in-process with a LocalRuntime (reports kept for the caller)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.storage.storage_helpers import scribble, write_image
from vmkeep.flows.run import run_flow
from vmkeep.jobs import maintenance_specs as ms
from vmkeep.jobs import specs
from vmkeep.jobs.licence_report import licence_report
from vmkeep.jobs.retention import prune, retention
from vmkeep.jobs.verify import VerifyFailed, verify
from vmkeep.runtime import LocalRuntime
from vmkeep.storage.disk_backup import backup_disk, commit_point
from vmkeep.storage.repository import Repository


@pytest.mark.parametrize(
    ("spec_type", "params", "field"),
    [
        (ms.VerifySpec, {"repo": ""}, "repo"),
        (ms.VerifySpec, {"repo": "/r", "subset": "8/7"}, "subset"),
        (ms.VerifySpec, {"repo": "/r", "subset": "x"}, "subset"),
        (ms.VerifyPointSpec, {"repo": "/r", "point": "", "check": "fs"}, "point"),
        (ms.VerifyPointSpec, {"repo": "/r", "point": "p", "check": "disk"}, "check"),
        (ms.VerifyPointSpec, {"repo": "/r", "point": "p", "check": "boot", "expect": "login["},
         "expect: not a regular expression"),  # was a traceback from the boot check
        (ms.VerifyPointSpec, {"repo": "/r", "point": "p", "check": "fs", "timeout": 1e300},
         "timeout"),  # Event.wait(1e300) is an OverflowError
        (ms.VerifySpec, {"repo": "/r", "boot_timeout": 1e9}, "boot_timeout"),
        (ms.RpoCheckSpec, {"repos": ["/r"], "max_age_hours": 1e300}, "max_age_hours"),
        (specs.SweepSpec, {"vcenter": {"url": "https://vc"}, "older_than_minutes": 1e300},
         "older_than_minutes"),  # timedelta(minutes=1e300) is an OverflowError
        (ms.RetentionSpec, {"repo": "/r"}, "keep rule"),
        (ms.RetentionSpec, {"repo": "/r", "keep_last": 1, "ids": ["abc"]}, "not both"),
        (ms.RetentionSpec, {"repo": "/r", "keep_within": "3x"}, "keep_within"),
        (ms.RetentionSpec, {"repo": "/r", "keep_last": -1}, "keep_last"),
        (ms.RetentionSpec, {"repo": "/r", "keep_last": 1, "grace": "soon"}, "grace"),
        (ms.PruneSpec, {"repo": "", "grace": "0s"}, "repo"),
        (ms.LicenceReportSpec, {"window_days": 0}, "window_days"),
        (ms.TapeCopySpec, {"repo": "/r", "library": "lab"}, "all_new"),
        (ms.TapeCopySpec, {"repo": "/r", "library": "", "all_new": True}, "library"),
        (ms.TapeRestoreSpec, {"point": "p", "to_repo": "", "library": "lab"}, "to_repo"),
    ],
)
def test_bad_maintenance_specs_are_one_clear_error(
    spec_type: type[specs.Spec], params: dict[str, Any], field: str
) -> None:
    with pytest.raises(specs.InvalidSpec) as info:
        specs.build(spec_type, params)
    assert info.value.exit_code == 14
    assert field in info.value.get_message()


def test_deployment_shapes_are_valid_specs() -> None:
    """What prefect.yaml passes (blank optional settings included) builds each spec."""
    ms.RetentionSpec(repo="/r", keep_daily=7, keep_weekly=4, keep_monthly=6, keep_within="")
    ms.LicenceReportSpec(repos=["/r", ""], window_days=90)
    ms.TapeRestoreSpec(point="p", to_repo="/r", library="lab", catalog_repo="")
    assert ms.parse_subset("2/7") == (2, 7) and 1 <= ms.parse_subset("*/7")[0] <= 7


def _repo_with_three_points(tmp_path: Path) -> Repository:
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    img = write_image(tmp_path / "a.img", size=1 << 20, seed=3)
    for i in range(3):  # each point rewrites the same 300 kB: the forgotten ones leave garbage
        scribble(img, [(0, 300_000)], seed=30 + i)
        with open(img, "rb") as f:
            commit_point(repo, "a", [backup_disk(repo, f, img.stat().st_size)])
    return repo


def test_retention_forgets_by_rule_then_prunes_and_reports(tmp_path: Path) -> None:
    repo = _repo_with_three_points(tmp_path)
    location = repo.backend.location
    newest = repo.list_points()[-1].id
    rt = LocalRuntime()
    dry = retention(ms.RetentionSpec(repo=location, keep_last=1, dry_run=True, grace="0s"), rt)
    assert dry["dry_run"] and len(dry["forgotten"]) == 2 and dry["prune"]["dry_run"]
    assert len(Repository.open(location).list_points()) == 3
    rt = LocalRuntime()
    done = retention(ms.RetentionSpec(repo=location, keep_last=1, grace="0s"), rt)
    assert [p["id"] for p in done["kept"]] == [newest] and done["kept"][0]["reasons"]
    assert done["policy"] == {"last": 1} and done["prune"]["points"] == 1
    assert [k for k, _, _ in rt.reports] == ["retention", "retention-prune"]
    assert rt.reports[0][2] == [{"name": "a", "kept": 1, "forgotten": 2}]
    assert [p.id for p in Repository.open(location).list_points()] == [newest]
    again = prune(ms.PruneSpec(repo=location, grace="0s"), LocalRuntime())
    assert again["points"] == 1 and again["packs_deleted"] == 0


def test_retention_by_id_may_forget_the_newest(tmp_path: Path) -> None:
    repo = _repo_with_three_points(tmp_path)
    newest = repo.list_points()[-1].id
    done = run_flow(retention_flow(), False, repo=repo.backend.location, ids=[newest[:10]],
                    prune_after=False)
    assert [p["id"] for p in done["forgotten"]] == [newest] and done["prune"] is None
    assert newest not in {p.id for p in Repository.open(repo.backend.location).list_points()}


def retention_flow() -> Any:
    from vmkeep.flows.retention import retention as flow

    return flow


def test_verify_checks_the_data_and_fails_loudly_on_a_flipped_bit(tmp_path: Path) -> None:
    repo = _repo_with_three_points(tmp_path)
    location = repo.backend.location
    rt = LocalRuntime()
    result = verify(ms.VerifySpec(repo=location, subset="1/1"), rt)
    assert result["check"]["ok"] and result["check"]["bytes_read"] > 0
    assert result["restores"] == [] and result["failed"] == []  # image points: no VM to restore
    assert [k for k, _, _ in rt.reports] == ["verify"]
    pack = next(p for p in (Path(location) / "packs").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(pack, 0o644)
    pack.write_bytes(bytes(data))
    rt = LocalRuntime()
    with pytest.raises(VerifyFailed, match="check") as info:
        verify(ms.VerifySpec(repo=location, subset="1/1"), rt)
    assert info.value.exit_code == 13
    assert rt.reports[0][2][0]["ok"] is False  # the report is published before the failure


def test_verify_test_restores_and_scans_each_file_backups_newest_point(tmp_path: Path) -> None:
    """File backups prove themselves in the weekly verify too: the newest point of each name
    gives back a file (and is scanned with ``yara_rules``); an empty source's point — a share
    that was not mounted — fails its row."""
    from vmkeep.guestfiles.backup import commit_file_point
    from vmkeep.guestfiles.local import LocalSource
    from vmkeep.storage.file_backup import backup_files

    repo = _repo_with_three_points(tmp_path)  # image points: not test-restored
    location = repo.backend.location
    share, empty = tmp_path / "share", tmp_path / "empty"
    (share / "docs").mkdir(parents=True)
    empty.mkdir()
    ids = {}
    for name, src, content in (("share", share, b"old"), ("share", share, b"quarterly"),
                               ("other", share, b"x" * 5000), ("unmounted", empty, b"")):
        if content:
            (share / "docs" / "report.txt").write_bytes(content)
        result = backup_files(repo, LocalSource(src), None)
        ids[name] = commit_file_point(repo, name, result, source=str(src), client="t").id
    rules = tmp_path / "r.yar"
    rules.write_text('rule quarterly { strings: $q = "quarterly" condition: $q }\n')
    rt = LocalRuntime()
    with pytest.raises(VerifyFailed, match="restore unmounted"):
        verify(ms.VerifySpec(repo=location, subset="1/1", yara_rules=[str(rules)]), rt)
    [report] = [rows for key, _t, rows in rt.reports if key == "verify"]
    rows = {r["what"]: r for r in report}
    assert set(rows) == {"check", *(f"{what} {name}@{ids[name][:8]}"  # the newest of each name
                                    for what in ("restore", "yara")
                                    for name in ("share", "other", "unmounted"))}
    assert rows[f"restore share@{ids['share'][:8]}"]["detail"] == "/docs/report.txt: 9 of 9 bytes"
    assert rows[f"restore other@{ids['other'][:8]}"]["ok"]
    assert "no regular file" in rows[f"restore unmounted@{ids['unmounted'][:8]}"]["detail"]
    assert sorted(what.split("@")[0] for what, r in rows.items() if not r["ok"]) == [
        "restore unmounted", "yara share"]


def test_licence_report_counts_the_repositories_and_reports_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo_with_three_points(tmp_path)
    rt = LocalRuntime()
    out = licence_report(ms.LicenceReportSpec(repos=[repo.backend.location, ""]), rt)
    assert out["allowed"] and out["compliant"] and out["tier"] == "community"
    assert [k for k, _, _ in rt.reports] == ["vmkeep-licence-report", "vmkeep-licence-usage"]
    assert "vmkeep licence report" in rt.reports[0][2]
