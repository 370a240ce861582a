"""``vmkeep verify yara``: a restore point's guest files scanned with YARA rules, on file systems
made by mke2fs and backed up with ``backup image`` — matches named by volume, path and rule, the
verdict recorded beside the point, large files skipped and counted, a damaged directory reported
while the scan goes on, and bad rules refused before anything is read."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import run_cli
from vmkeep.storage.repository import Repository

NOTE = b"YOUR FILES HAVE BEEN ENCRYPTED by vmkeep-test-locker\n"
PAYLOAD = b"\x4d\x5a\x90\x00" + b"A" * 100 + b"vmkeep-test-dropper-7f3a" + b"B" * 100
RULES = """
rule ransom_note { strings: $n = "vmkeep-test-locker" condition: $n }
"""
MORE_RULES = """
rule dropper { strings: $mz = { 4D 5A } $s = "vmkeep-test-dropper" condition: $mz at 0 and $s }
rule never { strings: $x = "not in any file 0b1f" condition: $x }
"""


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A repository with a point of an ext4 image holding a ransom note, a dropper, a 3 MiB
    file and ordinary files; and a rules folder."""
    work = tmp_path_factory.mktemp("yara")
    tree = work / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (tree / "home" / "ann").mkdir(parents=True)
    (tree / "home" / "ann" / "READ_ME_NOW.txt").write_bytes(NOTE)
    (tree / "home" / "ann" / "big.bin").write_bytes(random.Random(1).randbytes(3 << 20))
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "updater").write_bytes(PAYLOAD)
    (tree / "usr" / "bin" / "ls").write_bytes(b"\x7fELF" + bytes(2000))
    img = work / "disk.img"
    b.mkfs_ext4(tree, img, 16)
    repo = work / "repo"
    Repository.init(str(repo))
    code, out, err = run_cli("backup", "image", str(img), "--name", "web01", "--json", repo=repo)
    assert code == 0, err
    rules = work / "rules"
    (rules / "family").mkdir(parents=True)
    (rules / "notes.yar").write_text(RULES)
    (rules / "family" / "droppers.yara").write_text(MORE_RULES)
    (rules / "README").write_text("not a rule file")
    return {"repo": repo, "point": json.loads(out)["id"], "rules": rules, "work": work}


@pytest.fixture
def lab_env(esx_lab: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """vCenter credentials in the environment and the development licence (lab tests)."""
    import vmkeep.licensing.store as store

    keys = Path(__file__).resolve().parent.parent / "licensing" / "keys"
    monkeypatch.setenv("VMKEEP_VC_USER", esx_lab.user)
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", esx_lab.password)
    monkeypatch.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (keys / "dev_public.pem").read_bytes())
    monkeypatch.setenv("VMKEEP_LICENSE", str(keys / "dev_licence.json"))


def _scan(s: dict[str, Any], *extra: str) -> tuple[int, Any, str]:
    code, out, err = run_cli("verify", "yara", s["point"][:12], *extra, "--json", repo=s["repo"])
    return code, json.loads(out) if out.strip() else None, err


def test_matches_are_named_recorded_and_fail_the_check(scanned: dict[str, Any]) -> None:
    code, result, err = _scan(scanned, "--rules", str(scanned["rules"]))
    if os.environ.get("VMKEEP_PIN_DUMP"):  # the example in docs/cli.md
        Path(os.environ["VMKEEP_PIN_DUMP"]).write_text(json.dumps(result, indent=1))
    assert code == 13, err
    assert "2 file(s) of" in err and "match YARA rules" in err and "Traceback" not in err
    assert result["ok"] is False and result["rules"] == 3
    found = {m["path"]: m["rules"] for m in result["matches"]}
    assert found == {"/home/ann/READ_ME_NOW.txt": ["notes.ransom_note"],
                     "/usr/bin/updater": ["family.droppers.dropper"]}
    assert result["files_scanned"] == 5 and result["skipped_large"] == 0
    assert [v["volume"] for v in result["volumes"]] == ["disk0-whole"]
    code, out, err = run_cli("ls", scanned["point"][:12], "--json", repo=scanned["repo"])
    assert code == 0, err
    assert json.loads(out)["verifications"]["yara"]["ok"] is False


def test_clean_rules_pass_and_large_files_are_skipped(scanned: dict[str, Any]) -> None:
    clean = scanned["work"] / "clean.yar"
    clean.write_text(MORE_RULES.replace("dropper", "other").replace("4D 5A", "4D 5B"))
    code, result, err = _scan(scanned, "--rules", str(clean), "--max-file-size", "1",
                              "--no-record")
    assert code == 0, err
    assert result["ok"] is True and result["matches"] == []
    assert result["skipped_large"] == 1 and "/home/ann/big.bin" in result["skipped"][0]
    assert result["files_scanned"] == 4


def test_bad_rules_are_refused_before_anything_is_read(scanned: dict[str, Any]) -> None:
    broken = scanned["work"] / "broken.yar"
    broken.write_text("rule broken { strings: $a = \"x\" condition: $b }\n")
    code, _result, err = _scan(scanned, "--rules", str(broken))
    assert code == 14 and "YARA rules unusable" in err and "broken.yar" in err, err
    empty = scanned["work"] / "empty-rules"
    empty.mkdir()
    code, _result, err = _scan(scanned, "--rules", str(empty))
    assert code == 14 and "no rule files" in err, err
    code, _out, err = run_cli("verify", "yara", scanned["point"][:12], repo=scanned["repo"])
    assert code != 0 and "--rules" in err and "Traceback" not in err


def test_a_damaged_directory_is_reported_and_the_scan_goes_on(tmp_path: Path) -> None:
    img = b.overwritten_directory_image(tmp_path, "ext4", "/bad")
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    code, out, err = run_cli("backup", "image", str(img), "--name", "dmg", "--json", repo=repo)
    assert code == 0, err
    rules = tmp_path / "r.yar"
    rules.write_text('rule good_file { strings: $g = "good 7" condition: $g }\n')
    code, out, err = run_cli("verify", "yara", json.loads(out)["id"][:12], "--rules", str(rules),
                             "--json", repo=repo)
    result = json.loads(out)
    assert code == 13, err
    assert [m["path"] for m in result["matches"]] == ["/good/a-longer-file-name-7.txt"]
    assert any("/bad" in e for e in result["errors"]), result["errors"]
    assert result["files_scanned"] >= 40
    assert os.path.exists(img)


def test_a_verdict_is_reused_for_the_same_content_and_the_same_rules_only(
    scanned: dict[str, Any], tmp_path: Path,
) -> None:
    """One run's :class:`Verdicts`: a second scan of the same point with the same rules answers
    every file from them (and finds the same matches); other rules — or the same file names
    with other bytes — are matched afresh."""
    from vmkeep.browse.point import PointImage
    from vmkeep.browse.yarascan import Verdicts, load_rules, scan_point

    repo = Repository.open(str(scanned["repo"]))
    verdicts = Verdicts()
    only_notes = tmp_path / "notes-only"
    only_notes.mkdir()
    (only_notes / "notes.yar").write_text(RULES)
    with PointImage(repo, repo.load_point(scanned["point"])) as img:
        first = scan_point(img, load_rules([str(scanned["rules"])]), verdicts=verdicts)
        again = scan_point(img, load_rules([str(scanned["rules"])]), verdicts=verdicts)
        other = scan_point(img, load_rules([str(only_notes)]), verdicts=verdicts)
    assert first.cached == 0 and again.cached == again.files == first.files == 5
    assert again.matches == first.matches and len(first.matches) == 2
    assert other.cached == 0 and [m["path"] for m in other.matches] == [
        "/home/ann/READ_ME_NOW.txt"]
    (only_notes / "notes.yar").write_text(RULES + "\n// edited\n")  # same names, other bytes
    with PointImage(repo, repo.load_point(scanned["point"])) as img:
        edited = scan_point(img, load_rules([str(only_notes)]), verdicts=verdicts)
    assert edited.cached == 0


def test_the_documented_json_has_these_keys(scanned: dict[str, Any]) -> None:
    """docs/cli.md's ``verify yara --json`` example has the keys the command prints."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    [example] = re.findall(r"^### `vmkeep verify yara --json`.*?^```json\n(.*?)^```", doc,
                           re.S | re.M)
    documented = json.loads(example)
    _code, result, _err = _scan(scanned, "--rules", str(scanned["rules"]), "--no-record")
    assert sorted(result) == sorted(documented)
    assert sorted(result["matches"][0]) == sorted(documented["matches"][0])
    assert sorted(result["volumes"][0]) == sorted(documented["volumes"][0])


@pytest.mark.lab
def test_the_weekly_verify_scans_each_vms_newest_point(
    esx_lab: Any, lab_env: None, tmp_path: Path
) -> None:
    """``VerifySpec.yara_rules``: the scheduled verify scans the newest point of each VM; a
    match is a failed row of its report and fails the run (exit 13)."""
    from vmkeep.flows.backup_vm import backup_vm
    from vmkeep.flows.run import run_flow
    from vmkeep.jobs import maintenance_specs as ms
    from vmkeep.jobs.verify import VerifyFailed, verify
    from vmkeep.runtime import LocalRuntime

    repo = tmp_path / "repo"
    Repository.init(str(repo))
    run_flow(backup_vm, False, repo=str(repo), vm="small06", quiesce=False,
             vcenter=esx_lab.url, cafile=esx_lab.cafile)
    nothing = tmp_path / "nothing.yar"
    nothing.write_text('rule nothing { strings: $x = "absent 9f2c1e" condition: $x }\n')
    everything = tmp_path / "everything.yar"
    everything.write_text("rule every_file { condition: filesize >= 0 }\n")
    result = verify(ms.VerifySpec(repo=str(repo), subset="1/1", test_restores=False,
                                  yara_rules=[str(nothing)]), LocalRuntime())
    [row] = result["scans"]
    assert row["ok"] and row["vm"] == "small06" and "0 matched" in row["detail"]
    rt = LocalRuntime()
    with pytest.raises(VerifyFailed, match="yara small06") as info:
        verify(ms.VerifySpec(repo=str(repo), subset="1/1", test_restores=False,
                             yara_rules=[str(everything)]), rt)
    assert info.value.exit_code == 13
    [report] = [rows for key, _title, rows in rt.reports if key == "verify"]
    assert [r["what"] for r in report if not r["ok"]] == [f"yara small06@{row['point']}"]


@pytest.mark.lab
def test_secure_restore_refuses_a_point_that_matches(
    esx_lab: Any, lab_env: None, tmp_path: Path
) -> None:
    """``restore vm --yara``: the point's files are scanned before anything is created; a match
    refuses the restore (exit 13, nothing created), a clean scan restores and says so."""
    from tests.restore.test_restore_lab import destroy_vm
    from vmkeep.flows.backup_vm import backup_vm
    from vmkeep.flows.run import run_flow

    repo = tmp_path / "repo"
    Repository.init(str(repo))
    point = run_flow(backup_vm, False, repo=str(repo), vm="small06", quiesce=False,
                     vcenter=esx_lab.url, cafile=esx_lab.cafile)["id"][:12]
    everything = tmp_path / "everything.yar"
    everything.write_text("rule every_file { condition: filesize >= 0 }\n")
    nothing = tmp_path / "nothing.yar"
    nothing.write_text('rule nothing { strings: $x = "absent 9f2c1e" condition: $x }\n')
    name = "small06-secure"
    conn = ["--vcenter", esx_lab.url, "--cafile", esx_lab.cafile, "--name", name]
    try:
        code, _out, err = run_cli("restore", "vm", point, *conn, "--yara", str(everything),
                                  "--json", repo=repo)
        assert code == 13 and "Restore refused" in err and "every_file" in err, err
        assert not [v for v in esx_lab.client.status()["vms"] if v["name"] == name]
        code, out, err = run_cli("restore", "vm", point, *conn, "--yara", str(nothing),
                                 "--json", repo=repo)
        assert code == 0, err
        scan = json.loads(out)["scan"]
        assert scan["matches"] == 0 and scan["files_scanned"] > 0 and scan["rules"] == 1
    finally:
        destroy_vm(esx_lab, name)


def test_verify_yara_as_a_prefect_flow(prefect_api: str, scanned: dict[str, Any]) -> None:
    """``verify yara --prefect``: the verify-point flow scans; a match fails the run (exit 13)
    and the JSON still comes out."""
    import subprocess

    from tests.support.run_cli import VMKEEP, cli_env

    done = subprocess.run(
        [*VMKEEP, "verify", "yara", scanned["point"][:12], "--rules", str(scanned["rules"]),
         "--json", "--no-record", "--prefect"],
        env=cli_env(PREFECT_API_URL=prefect_api, VMKEEP_REPO=str(scanned["repo"])),
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 13, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(json.loads(done.stdout)["matches"]) == 2


def _clean_tree_and_repo(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A tree holding one harmless file, and an empty repository."""
    tree = tmp_path / name
    (tree / "home").mkdir(parents=True)
    (tree / "home" / "ok.txt").write_text("fine\n")
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    return tree, repo


def test_find_clean_walks_back_to_the_newest_clean_point(tmp_path: Path) -> None:
    """``--find-clean``: three points of one disk, the ransom note written before the second;
    scanning from the newest stops at the first, the newest clean one (exit 0).  From the
    oldest infected one with nothing older clean: exit 13."""
    tree, repo = _clean_tree_and_repo(tmp_path, "tree")
    ids = []
    for step in range(3):
        if step == 1:
            (tree / "home" / "READ_ME_NOW.txt").write_bytes(NOTE)
        img = tmp_path / f"d{step}.img"
        b.mkfs_ext4(tree, img, 8)
        code, out, err = run_cli("backup", "image", str(img), "--name", "srv", "--json",
                                 repo=repo)
        assert code == 0, err
        ids.append(json.loads(out)["id"])
    rules = tmp_path / "r.yar"
    rules.write_text(RULES)
    code, out, err = run_cli("verify", "yara", "srv@latest", "--rules", str(rules),
                             "--find-clean", "--json", repo=repo)
    assert code == 0, err
    result = json.loads(out)
    assert result["clean"] == ids[0]
    assert [p["point"] for p in result["points"]] == [ids[2], ids[1], ids[0]]
    assert [p["ok"] for p in result["points"]] == [False, False, True]
    # the older points' unchanged files keep the verdict of their content: not matched again
    first, *older = result["points"]
    assert first["files_cached"] == 0
    assert all(p["files_cached"] >= 1 and p["files_cached"] <= p["files_scanned"]
               for p in older), result["points"]
    assert older[0]["matches"] == first["matches"] == ["/home/READ_ME_NOW.txt"]
    code, out, err = run_cli("verify", "yara", ids[1][:12], "--rules", str(rules),
                             "--find-clean", "--json", repo=repo)
    assert code == 0 and json.loads(out)["clean"] == ids[0]
    (tmp_path / "all.yar").write_text("rule every_file { condition: filesize >= 0 }\n")
    code, out, err = run_cli("verify", "yara", "srv@latest", "--rules", str(tmp_path / "all.yar"),
                             "--find-clean", "--json", repo=repo)
    assert code == 13 and "no point of srv" in err, err
    assert json.loads(out)["clean"] is None and len(json.loads(out)["points"]) == 3


@pytest.mark.parametrize("how", [("start", "--host", "esx01.lab.local"),
                                 ("disk", "--vm", "rescue01")])
def test_instant_restore_is_refused_before_vcenter_is_contacted(
    scanned: dict[str, Any], monkeypatch: pytest.MonkeyPatch, how: tuple[str, str, str]
) -> None:
    """``instant-restore start --yara`` and ``instant-restore disk --yara``: a point that
    matches is refused (exit 13) before the job logs in anywhere — the vCenter named here does
    not even listen."""
    monkeypatch.setenv("VMKEEP_VC_USER", "nobody")
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", "unused")
    verb, option, value = how
    point = _as_vm_point(scanned) if verb == "start" else scanned["point"]
    code, _out, err = run_cli(
        "instant-restore", verb, point[:12], option, value,
        "--yara", str(scanned["rules"]), "--vcenter", "https://127.0.0.1:9/sdk", "--insecure",
        repo=scanned["repo"])
    assert code == 13 and "Restore refused" in err and "READ_ME_NOW.txt" in err, err
    assert "Traceback" not in err


def _as_vm_point(scanned: dict[str, Any]) -> str:
    """The scanned image point again, as a VM point with a (minimal) saved configuration."""
    import dataclasses

    repo = Repository.open(str(scanned["repo"]))
    image = repo.load_point(scanned["point"])
    vm = dataclasses.replace(image, kind="vm", id="",
                             meta={**image.meta, "vm_config": {"name": "web01"}})
    return repo.save_point(vm)


def test_instant_restore_of_a_point_without_a_vm_is_refused_before_vcenter(
    scanned: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``instant-restore start`` of an image point (no VM configuration): one line, exit 14,
    before the job logs in anywhere (was: vCenter first — a connection error here)."""
    monkeypatch.setenv("VMKEEP_VC_USER", "nobody")
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", "unused")
    code, _out, err = run_cli(
        "instant-restore", "start", scanned["point"][:12], "--host", "esx01.lab.local",
        "--vcenter", "https://127.0.0.1:9/sdk", "--insecure", repo=scanned["repo"])
    assert code == 14 and "not a VM backup with a saved configuration" in err, err
    assert "Traceback" not in err and "127.0.0.1" not in err


def test_a_file_point_is_scanned_and_find_clean_walks_its_chain(tmp_path: Path) -> None:
    """File backups are scanned too (a file server's shares): matches named ``files:/path``,
    the verdict recorded, ``--find-clean`` back to the newest clean file point, ``--volume``
    refused (a file point has none)."""
    tree, repo = _clean_tree_and_repo(tmp_path, "share")
    ids = []
    for step in range(3):
        if step == 1:
            (tree / "home" / "READ_ME_NOW.txt").write_bytes(NOTE)
            (tree / "dropper.exe").write_bytes(PAYLOAD)
        code, out, err = run_cli("backup", "files", str(tree), "--name", "share", "--json",
                                 repo=repo)
        assert code == 0, err
        ids.append(json.loads(out)["id"])
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "notes.yar").write_text(RULES)
    (rules / "more.yar").write_text(MORE_RULES)
    code, out, err = run_cli("verify", "yara", "share@latest", "--rules", str(rules), "--json",
                             repo=repo)
    assert code == 13 and "Traceback" not in err, err
    result = json.loads(out)
    assert {m["path"]: m["rules"] for m in result["matches"]} == {
        "/home/READ_ME_NOW.txt": ["notes.ransom_note"], "/dropper.exe": ["more.dropper"]}
    assert {m["volume"] for m in result["matches"]} == {"files"}
    assert result["files_scanned"] == 3 and result["volumes"][0]["volume"] == "files"
    code, out, err = run_cli("ls", "share@latest", "--json", repo=repo)
    assert code == 0, err
    assert json.loads(out)["verifications"]["yara"]["ok"] is False

    code, out, err = run_cli("verify", "yara", "share@latest", "--rules", str(rules),
                             "--find-clean", "--json", repo=repo)
    assert code == 0, err
    found = json.loads(out)
    assert found["clean"] == ids[0] and [p["ok"] for p in found["points"]] == [False, False, True]
    assert found["points"][1]["files_cached"] >= 2  # the same contents: verdicts reused

    code, _, err = run_cli("verify", "yara", "share@latest", "--rules", str(rules),
                           "--volume", "p1", repo=repo)
    assert code == 2 and "has no volumes" in err, err
