"""Regression (#24 item 5): usage was counted per repository and per free-text ``--client`` name,
so the same client name reused for other sources, or a second repository, escaped the count.
Usage is now counted per protected machine identity, across the installation's ledger and the
catalog of the repository written to."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.security.licence_helpers import back_up_image, make_image, new_repo, record_clients
from vmkeep.flows.backup_files import backup_files
from vmkeep.flows.run import run_flow
from vmkeep.licensing.errors import LicenceError, LicenceRefused
from vmkeep.licensing.identity import file_source_id, image_id, storage_location
from vmkeep.licensing.ledger import Ledger
from vmkeep.storage.repository import Repository
from vmkeep.tasks.catalog import catalog_items


def back_up_tree(repo: str, src: Path, name: str, client: str | None = None) -> object:
    return run_flow(backup_files, False, repo=repo, source=str(src), name=name, client=client)


def tree(path: Path) -> Path:
    path.mkdir()
    (path / "a.txt").write_text("hello\n")
    return path


def test_reusing_a_counted_client_name_for_another_source_is_counted(tmp_path: Path) -> None:
    """Ten clients are protected (db0…db9); naming this machine's files "db0" used to be free."""
    record_clients(10, prefix="db")
    repo = new_repo(tmp_path / "repo")
    with pytest.raises(LicenceRefused, match="community tier"):
        back_up_tree(repo, tree(tmp_path / "src"), "files", client="db0")
    assert Repository.open(repo).list_points() == []


def test_the_client_label_is_not_the_identity(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    back_up_tree(repo, tree(tmp_path / "src"), "one", client="label-a")
    back_up_tree(repo, tmp_path / "src", "two", client="label-b")
    items = catalog_items(Repository.open(repo))
    assert {i.identity for i in items} == {f"name:{socket.gethostname().lower()}"}
    assert {i.machine for i in items} == {"label-a", "label-b"}  # labels stay for listings
    assert [i.identity for i in Ledger().read()] == [f"name:{socket.gethostname().lower()}"]


def test_a_second_repository_does_not_reset_the_count(tmp_path: Path) -> None:
    first, second = new_repo(tmp_path / "a"), new_repo(tmp_path / "b")
    images = [make_image(tmp_path / f"d{i}.img", i) for i in range(11)]
    for image in images[:10]:
        back_up_image(first, image)
    back_up_image(second, images[3])  # an image already counted: allowed into any repository
    with pytest.raises(LicenceRefused, match="11 workloads"):
        back_up_image(second, images[10])
    assert [p.name for p in Repository.open(second).list_points()] == ["d3"]


def test_a_fresh_installation_still_counts_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting the ledger (or another data mover) does not escape: the catalog of the repository
    written to counts too."""
    repo = new_repo(tmp_path / "repo")
    for i in range(10):
        back_up_image(repo, make_image(tmp_path / f"d{i}.img", i))
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(tmp_path / "another-mover"))
    assert Ledger().read() == []
    back_up_image(repo, tmp_path / "d0.img")
    with pytest.raises(LicenceRefused):
        back_up_image(repo, make_image(tmp_path / "d10.img", 10))


def test_a_damaged_ledger_refuses_rather_than_forgets(tmp_path: Path) -> None:
    Ledger().path.parent.mkdir(parents=True, exist_ok=True)
    Ledger().path.write_text("{not json")
    with pytest.raises(LicenceError, match="usage ledger"):
        back_up_image(new_repo(tmp_path / "repo"), make_image(tmp_path / "d.img", 1))


MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 0:50 / /mnt/web rw,relatime - nfs4 web1.example:/srv/export rw,vers=4.2
41 22 0:51 / /mnt/db rw,relatime - cifs //DB2/share rw
42 22 0:52 / /mnt/my\\040files rw - fuse.sshfs user@files3:/home/u rw
"""


def test_local_paths_on_network_file_systems_count_their_server(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert file_source_id("/mnt/web/www", str(info)) == "name:web1.example"
    assert file_source_id("/mnt/db/x", str(info)) == "name:db2"
    assert file_source_id("/mnt/my files/x", str(info)) == "name:files3"
    assert file_source_id("/etc", str(info)) == f"name:{socket.gethostname().lower()}"
    assert file_source_id("sftp://u@Web1.example/srv") == "name:web1.example"
    assert storage_location("/mnt/web/vm1/disk.img", str(info)) == (
        "web1.example", "/srv/export/vm1/disk.img")
    assert image_id("/mnt/web/vm1/disk.img", str(info)) == (
        "image:web1.example:/srv/export/vm1/disk.img"
    )
