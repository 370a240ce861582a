"""Regression (#24 item 5): ``backup image`` never checked the licence.  Now every image backup
counts one workload (a guest seat, by the image's identity) and is checked before it is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vmkeep.jobs.backup_image as image_job
from tests.licensing.licensing_devkeys import write_licence
from tests.security.licence_helpers import (
    back_up_image,
    make_image,
    new_repo,
    real_cli,
    record_clients,
)
from tests.support.run_cli import VMKEEP, cli_env
from vmkeep.licensing.errors import LicenceRefused
from vmkeep.licensing.identity import image_id
from vmkeep.licensing.ledger import Ledger
from vmkeep.storage.repository import Repository


def test_first_image_backups_need_no_licence_and_the_eleventh_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = new_repo(tmp_path / "repo")
    images = [make_image(tmp_path / f"disk{i}.img", i) for i in range(11)]
    for image in images[:10]:  # a fresh installation, no licence: the community tier
        assert back_up_image(repo, image)["short_id"]
    back_up_image(repo, images[0])  # the same image again is no new workload

    def must_not_read(*a: object, **kw: object) -> object:
        raise AssertionError("the image was read before the licence check")

    monkeypatch.setattr(image_job, "back_up_image_disk", must_not_read)
    with pytest.raises(LicenceRefused, match="community tier") as info:
        back_up_image(repo, images[10])
    assert info.value.missing == {"esx_5seat_addon": 3}  # 11 guest seats, no ESX host
    assert len(Repository.open(repo).list_points()) == 11
    recorded = {i.identity for i in Ledger().read()}
    assert recorded == {image_id(p) for p in images[:10]}


def test_image_backups_count_against_an_installed_licence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev_trusted: None
) -> None:
    lic = write_licence(tmp_path / "lic.json", esx_5seat_addon=1)  # 5 guest seats
    monkeypatch.setenv("VMKEEP_LICENSE", str(lic))
    repo = new_repo(tmp_path / "repo")
    for i in range(5):
        back_up_image(repo, make_image(tmp_path / f"d{i}.img", i))
    with pytest.raises(LicenceRefused, match="1× ESX 5 Seat Add-on"):
        back_up_image(repo, make_image(tmp_path / "d5.img", 5))


def test_a_symlink_or_another_chain_name_is_the_same_image(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    record_clients(9)
    image = make_image(tmp_path / "disk.img", 1)
    back_up_image(repo, image)  # workload 10 of 10
    (tmp_path / "alias.img").symlink_to(image)
    back_up_image(repo, tmp_path / "alias.img", name="renamed-chain")
    with pytest.raises(LicenceRefused):
        back_up_image(repo, make_image(tmp_path / "other.img", 2), name="disk")


def test_cli_backup_image_exits_17_before_reading(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    record_clients(10)
    image = make_image(tmp_path / "disk.img", 3)
    env = cli_env(PREFECT_API_URL="", VMKEEP_REPO=repo)
    import subprocess

    proc = subprocess.run([*VMKEEP, "backup", "image", str(image), "--name", "d", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 17, proc.stderr
    assert "community tier" in proc.stderr and "Traceback" not in proc.stderr
    assert Repository.open(repo).list_points() == []
    # the installed CLI (no test hooks) refuses the same way
    real = real_cli("backup", "image", str(image), "--name", "d", VMKEEP_REPO=repo)
    assert real.returncode == 17 and "community tier" in real.stderr
    status = real_cli("license", "status", "--json", VMKEEP_REPO=repo)
    st = json.loads(status.stdout)
    assert status.returncode == 0 and st["tier"] == "community"
    assert st["meters"][0]["used"] == 10
