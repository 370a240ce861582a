"""An NTFS name or FAT long name with an unpaired UTF-16 surrogate (legal there: Windows lists,
opens and backs it up) is read as it is stored: its folder lists, its file reads, and a restore
reports that one name as ``unsafe-name`` and restores the rest — it used to make the whole
folder unreadable (dissect decoded every name strictly)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from vmkeep.browse.catalog import path_text, text_path
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.safe_restore import restore

NAME = "z\ud800qqlongname.txt"  # "zzqqlongname.txt", its second code unit a lone surrogate


@pytest.fixture(scope="module", params=["ntfs", "fat"])
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    fstype = request.param
    b._need(["mkntfs", "ntfs-3g", "fusermount3"] if fstype == "ntfs" else ["mkfs.vfat", "mcopy"])
    work = tmp_path_factory.mktemp(f"{fstype}-names")
    src = work / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "zzqqlongname.txt").write_bytes(b"a lone surrogate in my name\n")
    (src / "dir" / "plain.txt").write_bytes(b"plain\n")
    img = work / f"{fstype}.img"
    if fstype == "ntfs":
        b.mkfs_ntfs(src, img, work / "mnt")
    else:
        b.mkfs_fat32(src, img)
    data = img.read_bytes()
    old = "zzqq".encode("utf-16-le")
    # NTFS: the file's $FILE_NAME and its folder's $I30 entry; FAT: the long-name entry
    assert data.count(old) == (2 if fstype == "ntfs" else 1)
    img.write_bytes(data.replace(old, b"z\x00\x00\xd8q\x00q\x00"))
    return img


def test_the_folder_lists_and_the_file_reads(image: Path) -> None:
    with open(image, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert sorted(e.name for e in fs.listdir("/dir")) == sorted([NAME, "plain.txt"])
        with fs.open(f"/dir/{NAME}") as f:
            assert f.read() == b"a lone surrogate in my name\n"
        assert {e.path for e in fs.iter_entries("/")} >= {f"/dir/{NAME}", "/dir/plain.txt"}
    assert text_path(path_text(NAME)) == NAME and "\\ud800" in path_text(NAME)


def test_a_restore_reports_that_name_and_restores_the_rest(image: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with open(image, "rb") as fh:
        summary = restore(open_filesystem(fh, "v"), tmp_path / "out", "/dir")
    assert [(w.path, w.reason) for w in summary.skipped] == [(f"/dir/{NAME}", "unsafe-name")]
    assert "unpaired UTF-16 surrogate" in summary.skipped[0].detail
    assert (tmp_path / "out" / "plain.txt").read_bytes() == b"plain\n"  # the folder's contents


def test_an_alternate_stream_named_so_leaves_the_volume_readable(tmp_path: Path) -> None:
    """An NTFS alternate data stream whose name holds a lone surrogate: dissect decoded
    attribute names strictly, so its file — and, in the root folder, the whole volume — could
    not be read.  Now the volume lists, the file and the stream read, and a restore reports
    that one stream (no extended attribute can hold its name) and restores the file."""
    from vmkeep.browse.local import restore_image_paths
    from vmkeep.browse.point import PointImage
    from vmkeep.storage.repository import Repository
    from vmkeep.tasks.image import back_up_image_disk, commit_restore_point

    b._need(["mkntfs", "ntfs-3g", "fusermount3"])
    img, mnt = tmp_path / "ads.img", tmp_path / "mnt"
    with open(img, "wb") as f:
        f.truncate(24 << 20)
    b.run("mkntfs", "-q", "-F", "-Q", img)
    mnt.mkdir()
    b.run("ntfs-3g", "-o", "streams_interface=windows", img, mnt)
    try:
        (mnt / "f.txt").write_bytes(b"main\n")
        (mnt / "f.txt:zzqqstream").write_bytes(b"ads\n")
    finally:
        b.run("fusermount3", "-u", mnt)
    data = img.read_bytes()
    assert data.count("zzqq".encode("utf-16-le")) == 1
    img.write_bytes(data.replace("zzqq".encode("utf-16-le"), b"z\x00\x00\xd8q\x00q\x00"))
    stream = "z\ud800qqstream"
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        [entry] = fs.listdir("/")
        assert entry.name == "f.txt" and entry.streams == (stream,)
        assert fs.open("/f.txt").read() == b"main\n"
        assert fs.open("/f.txt", stream=stream).read() == b"ads\n"
    repo = Repository.init(str(tmp_path / "repo"))
    commit_restore_point(repo, "ads", [back_up_image_disk(repo, str(img))])
    (tmp_path / "out").mkdir()
    with PointImage.open(Repository.open(str(tmp_path / "repo")), "ads@latest") as point:
        summary = restore_image_paths(point, [("whole", "/f.txt")], str(tmp_path / "out"))
    assert [(w.path, w.reason) for w in summary.skipped] == [("/f.txt", "stream-error")]
    assert (tmp_path / "out" / "f.txt").read_bytes() == b"main\n"
