"""NTFS symbolic links whose reparse data is unusual: a print name holding an unpaired UTF-16
surrogate (NTFS names may hold one, and a link to such a file carries it), and reparse data
whose name fields point past its buffer (damage).  dissect.ntfs decodes print names strictly:
either made listing the link's *whole folder* fail as damaged, losing its siblings.  Made with
ntfs-3g's ``system.ntfs_reparse_data`` attribute, as Windows writes symlink reparse points."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.servers.sshd_server import SftpServer
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.restore_model import RestoreSummary
from vmkeep.disks.safe_restore import restore
from vmkeep.guestfiles.remote_restore import connect, write_sources

SYMLINK = 0xA000000C
RELATIVE = 1


def _symlink_point(substitute: bytes, printed: bytes, print_offset: int | None = None) -> bytes:
    """A symlink reparse point (tag, length, reserved; the name offsets and lengths, flags,
    the path buffer: substitute name then print name, UTF-16LE)."""
    offset = len(substitute) if print_offset is None else print_offset
    data = struct.pack("<HHHHI", 0, len(substitute), offset, len(printed), RELATIVE)
    data += substitute + printed
    return struct.pack("<IHH", SYMLINK, len(data), 0) + data


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b._need(["mkntfs", "ntfs-3g", "fusermount3"])
    tmp = tmp_path_factory.mktemp("ntfs-links")
    img, mnt = tmp / "ntfs.img", tmp / "mnt"
    with open(img, "wb") as f:
        f.truncate(16 * b.MiB)
    b.run("mkntfs", "-q", "-F", "-Q", img)
    mnt.mkdir()
    b.run("ntfs-3g", img, mnt)
    try:
        links = mnt / "links"
        links.mkdir()
        (links / "plain.txt").write_text("a sibling\n")
        lone = "x\ud800y".encode("utf-16-le", "surrogatepass")
        for name, point in (
            ("good", _symlink_point("plain.txt".encode("utf-16-le"),
                                    "plain.txt".encode("utf-16-le"))),
            ("lone", _symlink_point(lone, lone)),
            ("damaged", _symlink_point(b"a\0", b"b\0", print_offset=4000)),
        ):
            (links / name).write_bytes(b"")
            os.setxattr(links / name, "system.ntfs_reparse_data", point)
    finally:
        b.run("fusermount3", "-u", mnt)
    return img


def test_a_link_with_an_unpaired_surrogate_or_damaged_names_costs_no_sibling(
    volume: Path,
) -> None:
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        listed = {e.name: e for e in fs.listdir("/links")}
        assert set(listed) == {"plain.txt", "good", "lone", "damaged"}
        assert listed["good"].type == "symlink" and listed["good"].link == "plain.txt"
        assert listed["lone"].link == "x\ud800y"  # kept, as file names keep it
        assert fs.readlink("/links/lone") == "x\ud800y"
        assert listed["damaged"].type == "symlink" and listed["damaged"].link == ""
        with fs.open("/links/plain.txt") as f:
            assert f.read() == b"a sibling\n"


def test_restoring_the_folder_writes_every_link_it_can_and_reports_the_others(
    volume: Path, tmp_path: Path
) -> None:
    """A link target no Linux path can spell (the unpaired surrogate) is reported, never a
    crash of the whole restore; a damaged one (no target) too."""
    target = tmp_path / "out"
    target.mkdir()
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        summary = restore(fs, str(target), "/links")
    assert os.readlink(target / "good") == "plain.txt"
    assert (target / "plain.txt").read_text() == "a sibling\n"
    reasons = {w.path: w.reason for w in summary.skipped}
    assert set(reasons) == {"/links/lone", "/links/damaged"}, summary.skipped
    assert not (target / "lone").exists() and not (target / "damaged").exists()


def test_over_sftp_too(volume: Path, sftp_server: SftpServer) -> None:
    """The remote writer encoded the target with ``os.fsencode``: a UnicodeEncodeError that
    ended the restore."""
    folder = sftp_server.root / "ntfs-links"
    folder.mkdir()
    summary = RestoreSummary()
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        target = connect(sftp_server.url("ntfs-links"), sftp_server.options())
        try:
            write_sources([("v:", fs, ["/links"])], target, summary)
        finally:
            target.close()
    assert os.readlink(folder / "links" / "good") == "plain.txt"
    assert sorted((w.path, w.reason) for w in summary.skipped) == [
        ("/links/damaged", "unsafe-name"), ("/links/lone", "unsafe-name")]
