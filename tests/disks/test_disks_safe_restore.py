"""safe_restore: round trips from real file systems and every hostile case we know of."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.disks import disk_builders as b
from tests.disks.test_disks_filesystems import CASES, open_volume
from tests.hypothesis_profile import SUPPRESSED
from vmkeep.disks.errors import FsNotFoundError, RestoreError
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.restore_model import Ownership
from vmkeep.disks.safe_restore import restore, unsafe_name


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Everything under ``root`` (not following links): path -> (mode, content or link)."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st_ = p.lstat()
            if stat.S_ISLNK(st_.st_mode):
                out[str(p)] = (st_.st_mode, os.readlink(p))
            elif stat.S_ISREG(st_.st_mode) and st_.st_size < 1 << 24:
                out[str(p)] = (st_.st_mode, p.read_bytes())
            else:
                out[str(p)] = (st_.st_mode, b"")
    return out


def restored_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


@pytest.mark.parametrize("case", ["ext4", "xfs", "btrfs", "ntfs", "fat32", "lvm-ext4"])
def test_round_trip_from_real_filesystems(disks, case, tmp_path):
    disk_attr, vol, links, mtime, spaces = CASES[case]
    fs = open_volume(disks, disk_attr, vol)
    seen: list[int] = []
    summary = restore(fs, tmp_path, progress=seen.append)
    assert summary.skipped == []
    want = {p: h for p, h in disks.hashes.items() if spaces or " " not in p}
    got = restored_hashes(tmp_path)
    assert {p: got.get(p) for p in want} == want
    assert sum(seen) == summary.bytes > 1_000_000
    hello = (tmp_path / "hello.txt").stat()
    assert stat.S_IMODE(hello.st_mode) == 0o644
    if mtime:
        assert hello.st_mtime == 1_600_000_000
    if links:
        assert os.readlink(tmp_path / "link") == "hello.txt"
        assert os.readlink(tmp_path / "dirlink") == "deep/a"
        assert summary.symlinks == 2


def test_restore_a_subtree_and_a_single_file(disks, tmp_path):
    fs = open_volume(disks, "gpt", "p1")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    restore(fs, tmp_path / "a", "/deep/a")
    assert (tmp_path / "a/b/c/file.txt").read_bytes() == b"deep file\n" * 100
    restore(fs, tmp_path / "b", "/data/random.bin")
    assert (
        hashlib.sha256((tmp_path / "b/random.bin").read_bytes()).hexdigest()
        == disks.hashes["data/random.bin"]
    )
    with pytest.raises(RestoreError):
        restore(fs, tmp_path / "a", "/nope")
    with pytest.raises(RestoreError):
        restore(fs, tmp_path / "missing-target")


# -- a real hostile ext4 ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_fs(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    src = d / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hi\n")
    (src / "EVILDOTDOT").write_text("pwn\n")
    (src / "QQ").write_text("dots\n")
    (src / "SLASHNAME").write_text("slash\n")
    (src / "suid").write_text("#!/bin/sh\n")
    (src / "bs").write_text("backslash\n")
    img = d / "evil.img"
    b.run(
        "mke2fs", "-q", "-F", "-t", "ext4", "-O", "^metadata_csum,^dir_index", "-d", src, img, "8M"
    )
    script = d / "cmds"
    script.write_text(
        "\n".join(
            [
                "symlink evil /etc/passwd",
                "symlink up ../../../../../../tmp",
                "mknod fifo p",
                "mknod dev c 1 3",
                "link hello.txt hard2",
                "sif hello.txt links_count 2",
                "write /dev/null sparse",
                "sif sparse size 0x10000000000",
                "sif suid mode 0104755",
            ]
        )
        + "\n"
    )
    b.run("debugfs", "-w", "-f", script, img)
    data = bytearray(img.read_bytes())
    for old, new in [
        (b"EVILDOTDOT", b"../../x.sh"),
        (b"\x02\x01QQ", b"\x02\x01.."),
        (b"SLASHNAME", b"sub/../x9"),
        (b"\x02\x01bs", b"\x02\x01a\\"),
    ]:
        assert data.count(old) == 1, old
        data[data.index(old) : data.index(old) + len(old)] = new
    img.write_bytes(bytes(data))
    return open_filesystem(open(img, "rb"), "evil")


def test_hostile_real_filesystem(hostile_fs, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "outside").mkdir()
    before = snapshot(tmp_path / "outside")
    summary = restore(hostile_fs, target)
    reasons = {(w.path.rsplit("/", 1)[-1], w.reason) for w in summary.skipped}
    assert ("x.sh", "unsafe-name") in reasons  # "../../x.sh"
    assert ("x9", "unsafe-name") in reasons  # "sub/../x9"
    assert hostile_fs.listdir("/")  # a second ".." entry is dropped by the driver itself:
    assert b"dots\n" not in [v[1] for v in snapshot(tmp_path).values()]
    assert (target / "a\\").exists()  # a backslash is a character in a Linux name
    assert ("fifo", "special-file") in reasons and ("dev", "special-file") in reasons
    assert os.readlink(target / "evil") == "/etc/passwd"  # a link, never followed
    assert os.readlink(target / "up") == "../../../../../../tmp"
    assert (target / "hard2").stat().st_ino == (target / "hello.txt").stat().st_ino
    assert summary.hardlinks == 1
    sparse = (target / "sparse").stat()
    assert sparse.st_size == 1 << 40 and sparse.st_blocks == 0
    assert stat.S_IMODE((target / "suid").stat().st_mode) == 0o755  # set-uid dropped
    assert snapshot(tmp_path / "outside") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "target"]
    assert not Path("/x.sh").exists()


def test_size_cap(hostile_fs, tmp_path):
    summary = restore(hostile_fs, tmp_path, max_file_size=1 << 30)
    assert ("/sparse", "too-large") in {(w.path, w.reason) for w in summary.skipped}
    assert not (tmp_path / "sparse").exists()


# -- planted links in the target --------------------------------------------------------------
def _plant(tmp_path: Path) -> tuple[Path, Path]:
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    (target / "deep").symlink_to(outside)  # directory link planted in the target
    (target / "hello.txt").symlink_to(outside / "victim")  # file link planted in the target
    os.link(outside / "victim", target / "link")  # hard link planted in the target
    return target, outside


@pytest.mark.parametrize("overwrite", [False, True])
def test_planted_links_are_never_followed(disks, tmp_path, overwrite):
    fs = open_volume(disks, "gpt", "p1")
    target, outside = _plant(tmp_path)
    before = snapshot(outside)
    summary = restore(fs, target, overwrite=overwrite)
    assert snapshot(outside) == before
    if overwrite:
        assert (target / "deep").is_dir() and not (target / "deep").is_symlink()
        assert (target / "hello.txt").read_bytes() == b"hello world\n"
        assert os.readlink(target / "link") == "hello.txt"
    else:
        reasons = {(w.path, w.reason) for w in summary.skipped}
        assert reasons >= {
            ("/deep", "not-a-directory"),
            ("/hello.txt", "exists"),
            ("/link", "exists"),
        }
        assert os.readlink(target / "hello.txt") == str(outside / "victim")
        assert (target / "data/random.bin").is_file()  # the rest went on


# -- a fake source with names no real tool makes ----------------------------------------------
class FakeSource:
    def __init__(self) -> None:
        self.dirs: dict[str, list[Entry]] = {"/": []}
        self.data: dict[str, bytes] = {}

    def add(
        self,
        parent: str,
        name: str,
        kind: str = "file",
        data: bytes = b"",
        link: str | None = None,
        mode: int | None = None,
        inode: int | None = None,
        nlink: int = 1,
    ) -> str:
        path = "/" + name if parent == "/" else f"{parent}/{name}"
        fmt = {
            "file": stat.S_IFREG,
            "dir": stat.S_IFDIR,
            "symlink": stat.S_IFLNK,
            "other": stat.S_IFIFO,
        }[kind]
        self.dirs[parent].append(
            Entry(
                name,
                path,
                kind,
                len(data),
                1_500_000_000 * 10**9,
                fmt | (mode if mode is not None else 0o644),
                link=link,
                inode=inode,
                nlink=nlink,
                kind="fifo",
            )
        )
        if kind == "dir":
            self.dirs[path] = []
        self.data[path] = data
        return path

    def stat(self, path: str, follow: bool = False) -> Entry:
        if path == "/":
            return Entry("/", "/", "dir", 0, 0, stat.S_IFDIR | 0o755)
        raise FsNotFoundError("fake", path)

    def listdir(self, path: str = "/") -> list[Entry]:
        return self.dirs[path]

    def open(self, path: str, stream: str | None = None):
        return io.BytesIO(self.data[path])


HOSTILE = [
    "..",
    ".",
    "",
    "a/b",
    "../../etc/cron.d/x",
    "/etc/passwd",
    "a\\..\\b",
    "x\0y",
    "n" * 256,
    "\u00e9" * 128,
]


def test_fake_hostile_names(tmp_path):
    src = FakeSource()
    for name in HOSTILE:
        src.add("/", name, data=b"pwn")
    src.add("/", "ok.txt", data=b"fine")
    d = src.add("/", "dir", "dir")
    src.add(d, "..", "dir")
    src.add(d, "link", "symlink", link="../../../../etc/shadow")
    src.add(d, "link", "file", data=b"through the link?")  # same name again: must not follow
    src.add(d, "abs", "symlink", link="/")
    src.add(d, "abs", "dir")
    src.add(d, "nul", "symlink", link="a\0b")
    src.add(d, "fifo", "other")
    target = tmp_path / "t"
    target.mkdir()
    summary = restore(src, target)
    assert sorted(os.listdir(target)) == ["a\\..\\b", "dir", "ok.txt"]
    assert sorted(os.listdir(target / "dir")) == ["abs", "link"]
    assert os.readlink(target / "dir/link") == "../../../../etc/shadow"
    assert os.readlink(target / "dir/abs") == "/"
    reasons = [w.reason for w in summary.skipped]
    # "a\\..\\b" is a plain name on a Linux target; + "dir/.." + the NUL link
    assert reasons.count("unsafe-name") == len(HOSTILE) - 1 + 2
    assert {"exists", "not-a-directory", "special-file"} <= set(reasons)
    assert sorted(os.listdir(tmp_path)) == ["t"]


def test_directory_cycle_is_cut(tmp_path):
    src = FakeSource()
    d = src.add("/", "loop", "dir", inode=42)
    src.dirs[d].append(Entry("again", d + "/again", "dir", 0, 0, stat.S_IFDIR | 0o755, inode=42))
    src.dirs[d + "/again"] = src.dirs[d]
    summary = restore(src, tmp_path)
    assert [(w.path, w.reason) for w in summary.skipped] == [("/loop/again", "directory-cycle")]
    assert os.listdir(tmp_path / "loop") == []


def test_fake_hard_links_modes_and_progress(tmp_path):
    src = FakeSource()
    src.add("/", "a", data=b"x" * 3_000_000, inode=7, nlink=2, mode=0o6755)
    src.add("/", "b", data=b"x" * 3_000_000, inode=7, nlink=2, mode=0o6755)
    src.add("/", "zeros", data=bytes(5_000_000), mode=0o600)
    d = src.add("/", "ro", "dir", mode=0o500)
    src.add(d, "inside", data=b"in")
    seen: list[int] = []
    summary = restore(src, tmp_path, progress=seen.append)
    assert (tmp_path / "a").stat().st_ino == (tmp_path / "b").stat().st_ino
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert (tmp_path / "zeros").stat().st_size == 5_000_000
    assert (tmp_path / "zeros").stat().st_blocks == 0  # zeros became a hole
    assert stat.S_IMODE((tmp_path / "ro").stat().st_mode) == 0o500
    assert (tmp_path / "ro/inside").read_bytes() == b"in"
    assert sum(seen) == summary.bytes == 3_000_002
    assert (summary.files, summary.hardlinks, summary.dirs) == (3, 1, 1)
    keep = tmp_path / "keep"
    keep.mkdir()
    restore(src, keep, ownership=Ownership(setid=True))
    assert stat.S_IMODE((keep / "a").stat().st_mode) == 0o6755


names = st.text(st.sampled_from(list("ab./\\\0\u00e9")), min_size=0, max_size=6)


@settings(
    max_examples=60, deadline=None,
    suppress_health_check=[*SUPPRESSED, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(names, st.sampled_from(["file", "dir", "symlink"]), st.integers(0, 3)),
        max_size=12,
    )
)
def test_nothing_lands_outside_the_target(tmp_path_factory, plan):
    base = tmp_path_factory.mktemp("hyp")
    target = base / "t"
    target.mkdir()
    src = FakeSource()
    dirs = ["/"]
    for name, kind, parent_idx in plan:
        parent = dirs[parent_idx % len(dirs)]
        path = src.add(parent, name, kind, data=b"d", link=name or "x")
        if kind == "dir":
            dirs.append(path)
    restore(src, target, overwrite=True)
    assert sorted(os.listdir(base)) == ["t"]
    for dirpath, dirnames, filenames in os.walk(target):
        for n in dirnames + filenames:
            assert unsafe_name(n) is None
            real = Path(dirpath, n)
            assert os.path.realpath(real.parent).startswith(str(target.resolve()))


@given(st.text(max_size=300), st.booleans())
def test_unsafe_name_matches_a_single_host_component(name, backslash):
    ok = unsafe_name(name, backslash=backslash) is None
    expected = (
        name not in ("", ".", "..")
        and "/" not in name
        and not (backslash and "\\" in name)
        and "\0" not in name
        and len(name.encode("utf-8", "surrogateescape")) <= 255
    )
    assert ok == expected
    if ok:
        assert os.path.basename(name) == name and os.path.normpath(name) == name


class ShortSource(FakeSource):
    """A file system whose stream for ``short.bin`` ends before the file's size."""

    def open(self, path: str, stream: str | None = None):
        data = self.data[path]
        return io.BytesIO(data[: len(data) // 2] if path.endswith("short.bin") else data)


def test_a_stream_shorter_than_its_file_is_a_read_error_never_zeros(tmp_path):
    """The rest of a file its file system could not give is reported, not filled with zeros."""
    src = ShortSource()
    src.add("/", "short.bin", data=b"x" * 300_000)
    src.add("/", "whole.bin", data=b"y" * 300_000)
    summary = restore(src, tmp_path)
    assert [(w.path, w.reason) for w in summary.skipped] == [("/short.bin", "read-error")]
    assert "ends at byte 150000 of 300000" in summary.skipped[0].detail
    assert sorted(os.listdir(tmp_path)) == ["whole.bin"]
