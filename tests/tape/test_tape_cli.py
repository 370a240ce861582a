"""``vmkeep tape`` end to end as a user runs it (subprocess, direct mode) on the tgt VTL, and
the licence refusing a library with more slots than licensed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.licensing.licensing_devkeys import write_licence
from tests.storage.storage_helpers import backup, sha, write_image
from tests.support.run_cli import VMKEEP, cli_env  # the CLI trusting the development key
from vmkeep.storage.repository import Repository


def vmkeep(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture
def env(tmp_path: Path, vtl, tape_dir: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    e = cli_env(PREFECT_API_URL="", VMKEEP_TAPE_DIR=str(tape_dir), VMKEEP_TAPE_LIBRARY="lab")
    e.pop("VMKEEP_LICENSE", None)
    e.pop("PREFECT_API_URL", None)
    r = vmkeep("tape", "library", "add", "lab", "--url", vtl.url, "--changer-lun",
               str(vtl.changer_lun), "--drive-lun", "1", "--drive-lun", "2", env=e)
    assert r.returncode == 0, r.stderr
    return e


def _licence(tmp_path: Path, env: dict[str, str], slots: int) -> None:
    path = write_licence(tmp_path / f"lic{slots}.json", backup_client=10, autoloader_slot=slots)
    env["VMKEEP_LICENSE"] = str(path)


def test_cli_inventory_label_copy_restore(tmp_path: Path, env: dict[str, str]) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    img = write_image(tmp_path / "d.img", size=2 * 1024 * 1024)
    point, _ = backup(repo, img)
    _licence(tmp_path, env, 8)
    inv = vmkeep("tape", "inventory", "--json", env=env)
    assert inv.returncode == 0, inv.stderr
    assert json.loads(inv.stdout)["slots"] == 8
    listed = vmkeep("tape", "inventory", env=env)  # listings go to stdout, as `list` does
    assert listed.returncode == 0, listed.stderr
    assert "VMK003L6" in listed.stdout and "slot" in listed.stdout
    lab = vmkeep("tape", "label", "VMK003L6", "--pool", "daily", env=env)
    assert lab.returncode == 0, lab.stderr
    cp = vmkeep("tape", "copy", "--all-new", "--pool", "daily", "--repo", str(tmp_path / "repo"),
                "--json", env=env)
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout)
    assert report["cartridges"] == ["VMK003L6"]  # the labelled, empty cartridge of the pool
    assert any("pool daily is not defined" in w for w in report["warnings"])
    again = vmkeep("tape", "copy", "--all-new", "--repo", str(tmp_path / "repo"), "--json",
                   env=env)
    assert json.loads(again.stdout)["points"] == []  # nothing new
    out = tmp_path / "back"
    rs = vmkeep("tape", "restore", point.id[:10], "--to-repo", str(out), "--repo",
                str(tmp_path / "repo"), env=env)
    assert rs.returncode == 0, rs.stderr
    target = tmp_path / "restored.img"
    ri = vmkeep("restore", "image", point.id[:10], "--to", str(target), "--repo", str(out),
                env=env)
    assert ri.returncode == 0, ri.stderr
    assert sha(target) == sha(img)
    streamed = tmp_path / "streamed.img"
    st = vmkeep("restore", "image", point.id[:10], "--from-tape", "lab", "--to", str(streamed),
                "--repo", str(tmp_path / "repo"), env=env)
    assert st.returncode == 0, st.stderr
    assert sha(streamed) == sha(img)
    again = vmkeep("restore", "image", point.id[:10], "--from-tape", "lab", "--to",
                   str(streamed), "--repo", str(tmp_path / "repo"), env=env)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # an existing file is kept
    sc = vmkeep("tape", "scan", "--to-repo", str(tmp_path / "scanned"), "--json", env=env)
    assert sc.returncode == 0, sc.stderr
    scanned = json.loads(sc.stdout)
    assert scanned["points"] == [point.id]
    human = vmkeep("tape", "scan", "--to-repo", str(tmp_path / "scanned-again"), env=env)
    assert human.returncode == 0, human.stderr
    said = " ".join(human.stderr.split())  # the console wraps lines
    assert (f"{scanned['from_catalog_files']} data file(s) catalogued from their catalog file, "
            f"{scanned['read_in_full']} read in full") in said
    assert "read from tape" in said
    lost = str(tmp_path / "lost")  # VMKEEP_REPO still naming the lost repository
    for args in (["tape", "restore", point.id[:10], "--to-repo", str(tmp_path / "scanned")],
                 ["restore", "image", point.id[:10], "--from-tape", "lab", "--to",
                  str(tmp_path / "x.img")]):
        r = vmkeep(*args, env=dict(env, VMKEEP_REPO=lost))
        said = " ".join(r.stderr.split())
        assert r.returncode == 10 and f"no repository at {lost}" in said, r.stderr
        assert "tape scan --to-repo DIR" in said and "Traceback" not in said
    after_scan = vmkeep("tape", "restore", point.id[:10], "--to-repo", str(tmp_path / "scanned"),
                        env=env)  # the catalog defaults to the repository restored into
    assert after_scan.returncode == 0, after_scan.stderr
    again_img = tmp_path / "after-scan.img"
    ri = vmkeep("restore", "image", point.id[:10], "--to", str(again_img), "--repo",
                str(tmp_path / "scanned"), env=env)
    assert ri.returncode == 0 and sha(again_img) == sha(img), ri.stderr
    cat = vmkeep("tape", "catalog", "--repo", str(tmp_path / "scanned"), "--json", env=env)
    assert json.loads(cat.stdout)["files"][0]["tape_id"] == "VMK003L6"
    cat = vmkeep("tape", "catalog", "--repo", str(tmp_path / "scanned"), env=env)
    assert cat.returncode == 0 and cat.stdout.startswith("VMK003L6 file 1: 1 point(s)"), cat
    refused = vmkeep("tape", "label", "VMK003L6", "--pool", "weekly", env=env)
    assert refused.returncode == 2 and "--force" in refused.stderr  # unexpired data is kept


def test_licence_refuses_library_with_more_slots(tmp_path: Path, env: dict[str, str]) -> None:
    repo = Repository.init(str(tmp_path / "repo"))
    point, _ = backup(repo, write_image(tmp_path / "d.img", size=512 * 1024))
    _licence(tmp_path, env, 4)  # the VTL has 8 slots
    r = vmkeep("tape", "copy", point.id, "--repo", str(tmp_path / "repo"), env=env)
    assert r.returncode == 17, r.stderr
    assert "autoloader" in r.stderr.lower()
    inv = json.loads(vmkeep("tape", "inventory", "--json", env=env).stdout)
    assert all(e["full"] for e in inv["elements"] if e["kind"] == "slot")  # nothing moved
    assert "Traceback" not in r.stderr
