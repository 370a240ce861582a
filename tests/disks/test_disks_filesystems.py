"""The common file-system interface over real ext4, XFS, Btrfs, NTFS, FAT32 and exFAT volumes."""

from __future__ import annotations

import hashlib
import io
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.disks import disk_builders as b
from tests.hypothesis_profile import SUPPRESSED
from tests.missing import missing as tool_missing
from vmkeep.disks.errors import (
    FileSystemError,
    FsNotADirectoryError,
    FsNotASymlinkError,
    FsNotFoundError,
    UnknownFileSystemError,
)
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.fs.base import GuardedStream
from vmkeep.disks.vmdk.opener import open_disk
from vmkeep.disks.volumes import list_volumes

CASES = {
    # id: (disk attribute, volume name, has symlinks, keeps mtime, names with spaces)
    "ext4": ("gpt", "p1", True, True, True),
    "xfs": ("gpt", "p2", True, False, False),
    "lvm-ext4": ("gpt", "vg0/lvext", True, True, True),
    "lvm-fat32": ("gpt", "vg0/lvfat", False, True, True),
    "ntfs": ("mbr", "p1", True, True, True),
    "fat32": ("mbr", "p2", False, True, True),
    "btrfs": ("btrfs", "whole", True, True, True),
    "ext4-in-vmdk": ("vmdk_sparse", "p1", True, True, True),
}


def open_volume(disks, disk_attr: str, vol_name: str):
    disk = open_disk(getattr(disks, disk_attr))
    vol = next(v for v in list_volumes(disk) if v.name == vol_name)
    return open_filesystem(vol.open(), vol_name)


def tree_hashes(fs) -> dict[str, str]:
    out = {}
    for entry in fs.iter_entries("/"):
        if entry.type == "file":
            with fs.open(entry.path) as fh:
                out[entry.path.lstrip("/")] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_by_hash(disks, case):
    disk_attr, vol, links, mtime, spaces = CASES[case]
    fs = open_volume(disks, disk_attr, vol)
    got = tree_hashes(fs)
    want = {p: h for p, h in disks.hashes.items() if spaces or " " not in p}
    assert {p: got.get(p) for p in want} == want
    hello = fs.stat("/hello.txt")
    assert (hello.type, hello.size, hello.name, hello.path) == (
        "file",
        12,
        "hello.txt",
        "/hello.txt",
    )
    assert stat.S_ISREG(hello.mode)
    if mtime:
        assert hello.mtime_ns // 10**9 == 1_600_000_000
    assert fs.stat("/deep").type == "dir"
    assert {e.name for e in fs.listdir("/deep/a/b/c")} == {"file.txt"}
    if links:
        assert fs.readlink("/link") == "hello.txt"
        assert fs.stat("/link").type == "symlink"
        assert fs.stat("/link", follow=True).type == "file"
        assert fs.open("/link").read() == b"hello world\n"
        assert fs.open("/dirlink/b/c/file.txt").read() == b"deep file\n" * 100
        assert fs.stat("/dirlink/b/c/file.txt").path == "/deep/a/b/c/file.txt"
        with pytest.raises(FsNotASymlinkError):
            fs.readlink("/hello.txt")


def test_walk_matches_os_walk_shape(disks):
    fs = open_volume(disks, "gpt", "p1")
    walked = {
        top: ({d.name for d in dirs}, {f.name for f in files})
        for top, dirs, files in fs.walk("/deep")
    }
    assert walked == {
        "/deep": ({"a"}, set()),
        "/deep/a": ({"b"}, set()),
        "/deep/a/b": ({"c"}, set()),
        "/deep/a/b/c": (set(), {"file.txt"}),
    }


def test_paths_stay_inside_the_filesystem(disks):
    fs = open_volume(disks, "gpt", "p1")
    assert fs.stat("/../../../hello.txt").path == "/hello.txt"
    assert fs.stat("deep/../../hello.txt").path == "/hello.txt"
    assert fs.stat("/").type == "dir"
    with pytest.raises(FsNotFoundError):
        fs.stat("/etc/passwd")
    with pytest.raises(FsNotADirectoryError):
        fs.listdir("/hello.txt")
    with pytest.raises(FsNotADirectoryError):
        fs.stat("/hello.txt/x")
    with pytest.raises(FileSystemError):
        fs.open("/deep")


def test_ntfs_alternate_data_streams(disks):
    fs = open_volume(disks, "mbr", "p1")
    entry = fs.stat("/hello.txt")
    assert entry.streams == ("secret",)
    assert fs.open("/hello.txt", stream="secret").read() == b"alternate stream data\n"
    assert all(not e.name.startswith("$") for e in fs.listdir("/"))


def test_exfat_opens(disks):
    disk = open_disk(disks.mbr)
    vols = {v.name: v for v in list_volumes(disk)}
    if vols["p3"].fs != "exfat":
        tool_missing("exfatprogs not installed")
    fs = open_filesystem(vols["p3"].open(), "p3")
    assert fs.fstype == "exfat" and fs.listdir("/") == []


def test_unknown_and_corrupt_filesystems_are_typed():
    with pytest.raises(UnknownFileSystemError):
        open_filesystem(io.BytesIO(bytes(128 * 1024)))
    fake_ext = bytearray(128 * 1024)
    fake_ext[1080:1082] = b"\x53\xef"
    with pytest.raises(FileSystemError):
        open_filesystem(io.BytesIO(bytes(fake_ext)))
    fake_ntfs = bytearray(128 * 1024)
    fake_ntfs[3:11] = b"NTFS    "
    with pytest.raises(FileSystemError):
        open_filesystem(io.BytesIO(bytes(fake_ntfs)))


def test_corrupted_real_filesystem_fails_typed(disks):
    disk = open_disk(disks.gpt)
    vol = next(v for v in list_volumes(disk) if v.name == "p1")
    data = bytearray(vol.open().read(4 * 1024 * 1024))
    data[2048 : 2048 + 4096] = b"\xff" * 4096  # group descriptors
    with pytest.raises(FileSystemError):
        fs = open_filesystem(io.BytesIO(bytes(data)))
        list(fs.iter_entries("/"))


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_a_large_directory_with_a_later_block_overwritten_is_damaged(tmp_path, fstype):
    """dissect listed 93 (ext4) or 316 (XFS) of the 400 entries in silence."""
    from vmkeep.browse import fastlist
    from vmkeep.disks.errors import FsDamagedError

    img = b.overwritten_later_block_image(tmp_path, fstype)
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert len(fs.listdir("/small")) == 3
        damaged = r"block \d+ (holds no valid entry|is not a directory data block)"
        with pytest.raises(FsDamagedError, match=damaged):
            fs.listdir("/big")
        assert fastlist.listdir(fs, "/big") is None  # the fast ext path leaves it to the above


@pytest.mark.parametrize(("fstype", "seed"), [
    ("ext4", 0), ("xfs", 0), ("fat32", 0),
    ("fat32", 11),  # bytes dissect.fat takes for a broken long-name run (it raised TypeError)
    ("ntfs", 0),  # dissect.ntfs skipped the index buffer and listed the index root's entries
    ("exfat", 0), ("exfat", 1),
])
def test_an_overwritten_directory_is_damaged_not_empty(tmp_path, fstype, seed):
    """dissect lists a directory block of random bytes as empty (it skips what it cannot
    parse): vmkeep says the directory is damaged, and a restore brings back the rest."""
    from vmkeep.disks.errors import FsDamagedError
    from vmkeep.disks.safe_restore import restore

    img = b.overwritten_directory_image(tmp_path, fstype, "/bad", seed)
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert len(fs.listdir("/good")) == 40
        damaged = (r"does not begin with its '\.' entry|is in use but is not an index buffer"
                   r"|block 0 (holds no valid entry|is not a directory data block)"
                   r"|entry \d+: |follows the end of the directory")
        with pytest.raises(FsDamagedError, match=damaged):
            fs.listdir("/bad")
        target = tmp_path / "out"
        target.mkdir()
        summary = restore(fs, target, "/")
    assert (target / "good" / "a-longer-file-name-2.txt").read_bytes() == b"good 2\n"
    assert [(w.path, w.reason) for w in summary.skipped] == [("/bad", "read-error")]

    if fstype == "ext4":  # (XFS keeps a small root directory inside its inode)
        root = b.overwritten_directory_image(tmp_path / "root", fstype, "/")
        with open(root, "rb") as fh, pytest.raises(FsDamagedError):
            open_filesystem(fh, "v")


def test_read_failures_inside_files_are_typed():
    class Broken(io.RawIOBase):
        def read(self, n=-1):
            raise ValueError("corrupt run list")

        def seek(self, pos, whence=0):
            return pos

    stream = GuardedStream(Broken(), "vol", "/f")
    with pytest.raises(FileSystemError, match="corrupt run list"):
        stream.read(10)


@pytest.fixture(scope="module")
def ext4_fs(disks):
    return open_volume(disks, "gpt", "p1")


COMPONENTS = ["..", ".", "", "deep", "a", "b", "link", "dirlink", "hello.txt", "nope", "/"]


@settings(
    max_examples=150, deadline=None,
    suppress_health_check=[*SUPPRESSED, HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.sampled_from(COMPONENTS), max_size=10), st.booleans())
def test_any_path_resolves_inside_the_filesystem(ext4_fs, parts, follow):
    path = "/".join(parts)
    try:
        entry = ext4_fs.stat(path, follow=follow)
    except (FsNotFoundError, FsNotADirectoryError):
        return
    assert entry.path.startswith("/")
    assert ".." not in entry.path.split("/") and "//" not in entry.path
    again = ext4_fs.stat(entry.path)  # the canonical path names the same entry, without links
    assert (again.inode, again.type) == (entry.inode, entry.type)


def test_ext_directory_blocks_are_read_by_the_kernel_s_rules() -> None:
    import struct

    from vmkeep.disks.fs.ext import DirectoryDamaged, dirents

    def entry(inode: int, name: bytes, rec_len: int) -> bytes:
        return struct.pack("<IHBB", inode, rec_len, len(name), 1) + name.ljust(rec_len - 8, b"\0")

    block = entry(2, b".", 12) + entry(2, b"..", 12) + entry(0, b"", 16) + entry(99, b"z", 1984)
    assert [(i, n) for i, n, _ in dirents(block, 2024, 99, True)] == [(2, b"."), (2, b".."),
                                                                      (99, b"z")]  # the last inode
    for broken, why in (
        (block[:-4] + b"\0" * 4, None),  # still a valid chain: only the name's padding changed
        (entry(2, b".", 12) + entry(2, b"..", 2016), "not a multiple"),  # 2028 bytes
        (entry(2, b".", 12) + entry(2, b"..", 8) + bytes(2002), "no valid entry"),  # rec_len 8
        (entry(2, b".", 12) + entry(2, b"..", 14) + bytes(1998), "no valid entry"),  # not 4-aligned
        (entry(2, b".", 12) + entry(2, b"..", 2016) + b"1234", "not a multiple"),
        (entry(100, b".", 12) + entry(2, b"..", 2012), "names inode 100"),
    ):
        if why is None:
            assert len(list(dirents(broken, 2024, 99, True))) == 3
            continue
        try:
            list(dirents(broken, 2024, 99, True))
        except DirectoryDamaged as exc:
            assert why in str(exc), (why, exc)
        else:
            raise AssertionError(f"{why}: not refused")
