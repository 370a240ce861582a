"""``restore files`` of an image point into a remote folder (OpenSSH's SFTP, Samba's SMB on
loopback): the guest's file system read out of the image point, its files written over the
protocol with the rules of a file point's restore — names checked one by one, nothing over an
existing entry without ``--overwrite``, holes left as holes, a missing path refused before
anything is written.  Before, an image point's files went to a local folder or a guest only."""

from __future__ import annotations

import io
import json
import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

import pytest

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import run_cli, vmkeep_json
from tests.servers.smbd_server import SmbServer
from tests.servers.sshd_server import SftpServer
from vmkeep.disks.errors import FileSystemError
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.restore_model import RestoreSummary
from vmkeep.guestfiles.remote_restore import connect, write_sources
from vmkeep.storage.errors import RestoreTargetError

MiB = 1 << 20


@pytest.fixture(scope="module")
def image_point(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(repository, point id) of an ext4 image: a tree, a sparse file, a link, a name with a
    backslash (systemd's escaping, a character on Linux)."""
    tmp = tmp_path_factory.mktemp("remote-image")
    src = tmp / "src"
    (src / "etc" / "app").mkdir(parents=True)
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (src / "etc" / "app" / "app.conf").write_bytes(b"setting = 1\n" * 1000)
    os.chmod(src / "etc" / "app" / "app.conf", 0o640)
    with open(src / "etc" / "sparse.db", "wb") as f:
        f.truncate(8 * MiB)
        f.seek(6 * MiB)
        f.write(b"the only data" * 100)
    (src / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (src / "etc" / "system-x\\x2dy.slice").write_text("systemd\n")
    img = tmp / "disk.img"
    b.mkfs_ext4(src, img, size_mb=32)
    repo = tmp / "repo"
    vmkeep_json("init", repo=repo)
    point = vmkeep_json("backup", "image", str(img), "--name", "fs", repo=repo)["id"]
    return repo, point[:8]


@dataclass
class Folder:
    """A new folder on the SFTP server: its URL, its path on this machine, the login options."""

    url: str
    path: Path
    options: dict[str, object]


@pytest.fixture
def folder(sftp_server: SftpServer, monkeypatch: pytest.MonkeyPatch) -> Folder:
    """A new folder on the SFTP server, its key file in the environment (as for a source)."""
    monkeypatch.setenv("VMKEEP_SOURCE_KEY_FILE", str(sftp_server.key_file))
    name = f"guest-{uuid.uuid4().hex}"
    (sftp_server.root / name).mkdir()
    return Folder(sftp_server.url(name), sftp_server.root / name, sftp_server.options())


def test_an_image_points_files_restore_into_an_sftp_folder(
    image_point: tuple[Path, str], folder: Folder
) -> None:
    repo, point = image_point
    there = folder.path
    out = vmkeep_json("restore", "files", f"{point}:disk0-whole/etc", "--to",
                      folder.url, repo=repo)
    assert out["ok"] and out["errors"] == 0, out
    assert out["target"] == folder.url and out["chunks_fetched"] > 0
    etc = there / "etc"
    assert (etc / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert (etc / "app" / "app.conf").read_bytes() == b"setting = 1\n" * 1000
    assert (etc / "app" / "app.conf").stat().st_mode & 0o777 == 0o640
    assert os.readlink(etc / "localtime") == "/usr/share/zoneinfo/UTC"
    assert (etc / "system-x\\x2dy.slice").read_text() == "systemd\n"
    sparse = etc / "sparse.db"
    data = sparse.read_bytes()
    assert len(data) == 8 * MiB and data[6 * MiB:].rstrip(b"\0") == b"the only data" * 100
    assert not data[: 6 * MiB].strip(b"\0")
    assert sparse.stat().st_blocks * 512 < MiB  # the hole was skipped, not sent as zeros
    assert out["bytes"] < MiB
    # again: the file exists — kept and reported (by choice: no data lost, exit 0);
    # --overwrite replaces it
    code, _out, err = run_cli("restore", "files", f"{point}:disk0-whole/etc/hosts", "--to",
                              f"{folder.url}/etc", repo=repo)
    assert code == 0 and "skipped /etc/hosts: exists" in err, err
    (etc / "hosts").write_text("changed")
    again = vmkeep_json("restore", "files", f"{point}:disk0-whole/etc/hosts", "--to",
                        f"{folder.url}/etc", "--overwrite", repo=repo)
    assert again["files"] == 1 and (etc / "hosts").read_text() == "127.0.0.1 localhost\n"


def test_a_whole_volume_restores_into_an_smb_share_with_linux_only_names_refused(
    image_point: tuple[Path, str], smb_server: SmbServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, point = image_point
    monkeypatch.setenv("VMKEEP_SOURCE_PASSWORD", smb_server.password)
    name = f"guest-{uuid.uuid4().hex}"
    there = smb_server.root / name
    there.mkdir()
    url = smb_server.url(name).replace("smb://", f"smb://{smb_server.user}@")
    code, out, err = run_cli("restore", "files", f"{point}:disk0-whole", "--to", url, "--json",
                             repo=repo)
    assert code == 3, err  # the backslash name cannot be one name on a share
    summary = json.loads(out)
    assert sorted((w["path"], w["reason"]) for w in summary["skipped"]) == [
        ("/etc/localtime", "unsupported"), ("/etc/system-x\\x2dy.slice", "unsafe-name")]
    assert (there / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert (there / "etc" / "app" / "app.conf").read_bytes() == b"setting = 1\n" * 1000
    assert "lost+found" in os.listdir(there)  # the volume's contents, not the volume


def test_a_missing_path_or_a_wrong_url_writes_nothing(
    image_point: tuple[Path, str], folder: Folder
) -> None:
    repo, point = image_point
    code, _out, err = run_cli("restore", "files", f"{point}:disk0-whole/etc/hosts",
                              f"{point}:disk0-whole/etc/nothing-here", "--to",
                              folder.url, repo=repo)
    assert code != 0 and "nothing-here" in err, err
    assert not list(folder.path.iterdir())
    for to, says in (("smb://", "names no host"), ("s3://bucket/x", "unsupported target")):
        code, _out, err = run_cli("restore", "files", f"{point}:disk0-whole/etc", "--to", to,
                                  repo=repo)
        assert code == 2 and says in err, (to, err)


class _DamagedVolume:
    """A guest file system whose ``broken.bin`` fails half-way through and whose ``short.bin``
    holds less data than its size says (damaged guest disks do both)."""

    FILES: ClassVar[dict[str, bytes]] = {
        "good.txt": b"fine\n", "broken.bin": b"x" * (3 * MiB), "short.bin": b"y" * 100,
    }

    def stat(self, path: str, follow: bool = False) -> Entry:
        if path == "/":
            return Entry(name="", path="/", type="dir", size=0, mtime_ns=0, mode=0o40755)
        name = path.strip("/")
        size = 5000 if name == "short.bin" else len(self.FILES[name])
        return Entry(name=name, path=path, type="file", size=size, mtime_ns=10**18, mode=0o100644)

    def listdir(self, path: str = "/") -> list[Entry]:
        return [self.stat("/" + name) for name in self.FILES]

    def open(self, path: str, stream: str | None = None) -> BinaryIO:
        name = path.strip("/")
        data = self.FILES[name]
        if name == "broken.bin":
            return _FailsAfter(data, MiB)
        return io.BytesIO(data)


class _FailsAfter(io.BytesIO):
    def __init__(self, data: bytes, good: int) -> None:
        super().__init__(data)
        self.good = good

    def read(self, n: int | None = -1) -> bytes:
        if self.tell() >= self.good:
            raise FileSystemError("p1", "broken.bin: bad extent")
        return super().read(n)


def test_a_file_the_guest_file_system_cannot_read_is_reported_and_not_left_half_written(
    folder: Folder,
) -> None:
    summary = RestoreSummary()
    target = connect(folder.url, folder.options)
    try:
        write_sources([("p1:", _DamagedVolume(), ["/"])], target, summary)
    finally:
        target.close()
    assert sorted((w.path, w.reason) for w in summary.skipped) == [
        ("/broken.bin", "read-error"), ("/short.bin", "read-error")]
    assert "its data ends at byte 100 of 5000" in str(summary.skipped)
    assert sorted(os.listdir(folder.path)) == ["good.txt"] and summary.files == 1


def test_a_missing_or_wrong_target_folder_is_a_target_error(
    image_point: tuple[Path, str], sftp_server: SftpServer, smb_server: SmbServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A folder that is not there (or is a file) was an unhandled FileNotFoundError from
    paramiko, with a traceback; now exit 15 before anything is written, as for a local target."""
    repo, point = image_point
    monkeypatch.setenv("VMKEEP_SOURCE_KEY_FILE", str(sftp_server.key_file))
    monkeypatch.setenv("VMKEEP_SOURCE_PASSWORD", smb_server.password)
    (sftp_server.root / "a-file").write_text("x")
    smb_url = smb_server.url("nope/deeper").replace("smb://", f"smb://{smb_server.user}@")
    for url, says in ((sftp_server.url("nope/deeper"), "does not exist"),
                      (smb_url, "does not exist"), (sftp_server.url("a-file"), "is not a folder")):
        code, _out, err = run_cli("restore", "files", f"{point}:disk0-whole/etc/hosts", "--to",
                                  url, repo=repo)
        assert code == 15 and says in err and "Traceback" not in err, (url, err)
    assert not (sftp_server.root / "nope").exists() and not (smb_server.root / "nope").exists()


def test_what_the_server_refuses_is_a_write_error_and_the_rest_is_written(
    image_point: tuple[Path, str], folder: Folder
) -> None:
    repo, point = image_point
    app = folder.path / "etc" / "app"
    app.mkdir(parents=True)
    if subprocess.run(["chattr", "+i", str(app)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        code, out, err = run_cli("restore", "files", f"{point}:disk0-whole/etc", "--to",
                                 folder.url, "--json", repo=repo)
    finally:
        subprocess.run(["chattr", "-i", str(app)], check=True)
    assert code == 3, err
    summary = json.loads(out)
    assert [(w["path"], w["reason"]) for w in summary["skipped"]] == [
        ("/etc/app/app.conf", "write-error"), ("/etc/app", "write-error")]  # its time, last
    assert (folder.path / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"


def test_a_connection_lost_mid_file_stops_the_restore_with_a_target_error(
    folder: Folder,
) -> None:
    """paramiko reports a closed session as an ``OSError`` without errno, like a refusal:
    without looking at the session, every later entry became a ``write-error``."""
    target = connect(folder.url, folder.options)

    def drop() -> None:
        target.ftp.get_channel().get_transport().close()  # type: ignore[union-attr]

    summary = RestoreSummary()
    with pytest.raises(RestoreTargetError, match="the connection was lost"):
        write_sources([("", _DroppingVolume(drop), ["/"])], target, summary)
    assert summary.skipped == []


class _DroppingVolume(_DamagedVolume):
    """Two files; the connection drops while the first is read."""

    FILES: ClassVar[dict[str, bytes]] = {"a.bin": b"a" * (3 * MiB), "b.bin": b"b" * MiB}

    def __init__(self, drop: Callable[[], None]) -> None:
        self.drop = drop

    def open(self, path: str, stream: str | None = None) -> BinaryIO:
        drop = self.drop

        class Dropping(io.BytesIO):
            def read(self, n: int | None = -1) -> bytes:
                if self.tell() >= MiB:
                    drop()
                return super().read(n)

        return Dropping(self.FILES[path.strip("/")])
