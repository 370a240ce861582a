"""``backup vm --exclude-swap`` on the ESX lab: win01's ``pagefile.sys`` is recorded as zeros,
never read; every other byte of the disk is restored; the next CBT incremental, audited at
100 %, does not mistake the recorded zeros for a lying CBT; ``vmkeep ls``/``restore files`` show
an empty page file and every other file intact."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env
from tests.vmbackup.vmbackup_helpers import restored_hash, sha
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.disk_backup import chunks_within
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
CHUNK = 256 * 1024  # the vmbackup fixture repository's chunk size
MiB = 1 << 20


def _without_swap(disk: bytes, areas: list[dict[str, Any]]) -> bytes:
    """``disk`` with the whole chunks inside ``areas`` zeroed (what the point must hold)."""
    out = bytearray(disk)
    for r in chunks_within([(a["offset"], a["length"]) for a in areas], len(disk), CHUNK):
        start, end = r.start * CHUNK, min(len(disk), r.stop * CHUNK)
        out[start:end] = bytes(end - start)
    return bytes(out)


def test_exclude_swap_skips_the_page_file_and_survives_the_audit(
    lab: Any, vc_env: dict[str, Any], repo: str, tmp_path: Path
) -> None:
    first = run_flow(backup_vm, False, repo=repo, vm="win01", exclude_swap=True,
                     cbt_audit="100", **vc_env)
    d1 = first["disks"][0]
    assert d1["bytes_excluded"] >= 3 * MiB, d1  # the 4 MiB page file, whole chunks only
    extra = Repository.open(repo).load_point(first["id"]).disks[0].extra
    swap = extra["swap"]
    assert [a["what"] for a in swap["areas"]] == ["p1:/pagefile.sys"], swap
    assert swap["bytes"] == 4 * MiB and swap["notes"] == []
    assert extra["cbt"]["zeroed_ranges"], extra["cbt"]
    disk = lab.read_disk("win01", 0)
    expected = _without_swap(disk, swap["areas"])
    assert expected != disk
    assert restored_hash(repo, first["id"], 0, tmp_path) == sha(expected)

    # the next run is a CBT incremental whose audit samples every unread chunk: the chunks the
    # first point holds as zeros differ from the disk, and must not be taken for CBT lying
    second = run_flow(backup_vm, False, repo=repo, vm="win01", exclude_swap=True,
                      cbt_audit="100", **vc_env)
    d2 = second["disks"][0]
    assert d2["mode"] == "cbt", d2
    assert second["cbt_audit"]["status"] == "ok", second["cbt_audit"]
    assert second["cbt_audit"]["chunks_sampled"] > 0
    assert not any("cbt-suspect" in w for w in second["warnings"])
    assert restored_hash(repo, second["id"], 0, tmp_path) == sha(expected)

    # the guest view: an empty page file, every other file as it was
    env = cli_env(PREFECT_API_URL="", VMKEEP_REPO=repo)
    out = tmp_path / "files"
    point = second["id"]
    cli = subprocess.run(
        [*VMKEEP, "restore", "files", f"{point}:p1/pagefile.sys",
         f"{point}:p1/Users/Administrator/Documents/budget.csv", "--to", str(out), "--json"],
        env=env, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    [page] = out.rglob("pagefile.sys")
    assert page.read_bytes() == bytes(4 * MiB)
    [budget] = out.rglob("budget.csv")
    assert budget.read_text().startswith("0,")
    # ls POINT tells what was left out
    shown = subprocess.run([*VMKEEP, "ls", point, "--json"], env=env, capture_output=True,
                           text=True)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["disks"][0]["swap"]["bytes"] == 4 * MiB
    shown = subprocess.run([*VMKEEP, "ls", point], env=env, capture_output=True, text=True)
    assert "swap left out (zeros): 4.0 MiB in p1:/pagefile.sys" in shown.stdout, shown.stdout
    # a disk streamed over nfc cannot be searched: read whole, with a warning naming it
    streamed = run_flow(backup_vm, False, repo=repo, vm="win01", exclude_swap=True,
                        transport="nfc", **vc_env)
    assert streamed["disks"][0]["bytes_excluded"] == 0
    assert any("disk 2000" in w and "nfc" in w and "read whole" in w
               for w in streamed["warnings"]), streamed["warnings"]
    # (a cbt read: what it did not read, the page file among it, is still the base's zeros)
    assert restored_hash(repo, streamed["id"], 0, tmp_path) == sha(expected)
    # without --exclude-swap (the default) the page file is read like any file: from the next
    # read of its chunks on — here an active full
    third = run_flow(backup_vm, False, repo=repo, vm="win01", read_whole=True, **vc_env)
    assert third["disks"][0]["bytes_excluded"] == 0
    assert restored_hash(repo, third["id"], 0, tmp_path) == sha(disk)
    listed = subprocess.run([*VMKEEP, "ls", f"{third['id']}:p1/pagefile.sys", "--json"],
                            env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)
    cli = subprocess.run(
        [*VMKEEP, "restore", "files", f"{third['id']}:p1/pagefile.sys", "--to",
         str(tmp_path / "again"), "--json"], env=env, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    [page] = (tmp_path / "again").rglob("pagefile.sys")
    assert page.read_bytes() != bytes(4 * MiB)
    # through a staging proxy: the page file is neither staged nor read, the point as direct
    staged = run_flow(backup_vm, False, repo=repo, vm="win01", exclude_swap=True,
                      read_whole=True, stage_dir=str(tmp_path / "stage"), **vc_env)
    assert staged["disks"][0]["bytes_excluded"] == d1["bytes_excluded"], staged
    assert restored_hash(repo, staged["id"], 0, tmp_path) == sha(expected)
