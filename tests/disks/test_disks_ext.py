"""ext4 with metadata_csum (mke2fs's default) is checked by its checksums before it is believed:
one flipped bit in a directory leaf, a hashed directory's index or a file's inode is damage (of
that directory; of that file alone), never a wrong name or other bytes restored in silence."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs import open_filesystem

DATA = bytes(range(256)) * 1000
FILES = 2000


def _image(tmp: Path, *options: str, index: bool = False) -> Path:
    b._need(b.DIRECTORY_TOOLS["ext4"])
    tree = tmp / "tree"
    (tree / "big").mkdir(parents=True)
    for i in range(FILES):
        (tree / "big" / f"a-longer-file-name-{i:04d}.txt").write_text(f"big {i}\n")
    (tree / "data.bin").write_bytes(DATA)
    (tree / "other.txt").write_text("other\n")
    with open(tree / "islands.bin", "wb") as f:  # 12 extents: an extent block below the inode
        for i in range(12):
            f.seek(i * 65536)
            f.write(bytes([i + 1]) * 4096)
    img = tmp / "ext4.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", *options, "-d", str(tree),
                    str(img), "64M"], check=True)
    if index:  # hashed directories, as the kernel builds them for large ones
        subprocess.run(["e2fsck", "-fyD", str(img)], capture_output=True)
    return img


def _debugfs(img: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(img)], check=True, capture_output=True,
                          text=True).stdout


def _flipped(img: Path, at: int, bit: int = 0x20):  # type: ignore[no-untyped-def]
    raw = bytearray(img.read_bytes())
    raw[at] ^= bit
    return open_filesystem(io.BytesIO(bytes(raw)), "v")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _image(tmp_path_factory.mktemp("ext4"))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _image(tmp_path_factory.mktemp("ext4x"), index=True)


@pytest.mark.parametrize("kind", ["plain", "indexed", "no metadata_csum"])
def test_clean_volumes_read(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    img = (_image(tmp_path, "-O", "^metadata_csum") if kind == "no metadata_csum"
           else request.getfixturevalue(kind))
    fs = open_filesystem(io.BytesIO(img.read_bytes()), "v")
    assert fs.checksums == (kind != "no metadata_csum")
    assert len(fs.listdir("/big")) == FILES
    with fs.open("/data.bin") as f:
        assert f.read() == DATA
    if kind == "indexed":
        assert fs.fs.get("/big").inode.i_flags & 0x1000  # EXT4_INDEX_FL


def test_one_flipped_bit_in_a_name_is_damage(plain: Path) -> None:
    last = int(_debugfs(plain, "bmap /big 5").split()[-1]) * 4096  # a leaf block of /big
    name = plain.read_bytes()[last : last + 4096].index(b"a-longer-file-name-")
    fs = _flipped(plain, last + name + 2)  # "a-longer" -> "a-Longer": still a valid entry
    with pytest.raises(FsDamagedError, match=r"block 5: checksum mismatch"):
        fs.listdir("/big")
    assert fs.open("/data.bin").read() == DATA
    # the fast listing (ls, find's catalog) reads through the same checks
    from vmkeep.browse import fastlist

    assert fastlist.listdir(fs, "/big") is None  # left to the generic path's typed error
    reported: list[str] = []
    names = {e.name for e in fastlist.iter_entries(fs, lambda path, _e: reported.append(path))}
    assert reported == ["/big"] and not any(n.startswith("a-Longer") for n in names)


def test_one_flipped_bit_in_a_directory_index_is_damage(indexed: Path) -> None:
    root = int(_debugfs(indexed, "bmap /big 0").split()[-1]) * 4096
    fs = _flipped(indexed, root + 0x28, 0x01)  # a hash in the index root's entries
    with pytest.raises(FsDamagedError, match=r"block 0: checksum mismatch"):
        fs.listdir("/big")


def test_one_flipped_bit_in_a_file_inode_fails_that_file_alone(plain: Path,
                                                               tmp_path: Path) -> None:
    where = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)",
                      _debugfs(plain, "imap /data.bin"))
    assert where, "debugfs imap"
    at = int(where[1]) * 4096 + int(where[2], 16) + 0x05  # i_size_lo's second byte
    fs = _flipped(plain, at, 0x01)  # 256 bytes more: bytes that are not the file's
    b.assert_file_alone_is_lost(fs, tmp_path / "out", "/data.bin", "checksum mismatch")
    assert (tmp_path / "out" / "other.txt").read_text() == "other\n"


def test_one_flipped_bit_in_an_extent_block_fails_that_file(plain: Path) -> None:
    rows = _debugfs(plain, "ex /islands.bin").splitlines()
    index = next(r for r in rows if r.split()[:1] == ["0/"])  # the root's entry: level 0 of 1
    block = int(index.split()[-2])  # the extent block it points to
    fs = open_filesystem(io.BytesIO(plain.read_bytes()), "v")
    with fs.open("/islands.bin") as f:
        assert f.read(65536 * 11 + 1)[65536 * 3] == 4
    at = block * 4096 + 12 + 12 * 3 + 4  # the fourth extent's physical start
    fs = _flipped(plain, at, 0x01)
    with pytest.raises(FsDamagedError, match=f"extent block {block}: checksum mismatch"):
        fs.open("/islands.bin")
    assert fs.open("/data.bin").read() == DATA


def test_open_listed_reads_what_open_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``FileSystem.open_listed`` (the node from the listing's cache) gives the bytes ``open``
    (a walk down the path) gives, for every file of a walk; a directory entry is refused."""
    import pytest

    from tests.disks import disk_builders as b
    from vmkeep.disks.errors import FileSystemError
    from vmkeep.disks.fs.ext import ExtFileSystem

    tree = tmp_path / "tree"
    b.make_tree(tree)
    img = tmp_path / "ext.img"
    b.mkfs_ext4(tree, img)
    with open(img, "rb") as f:
        fs = ExtFileSystem(f, "ext")
        files = [e for _d, _dirs, others in fs.walk("/") for e in others if e.type == "file"]
        assert files
        for e in files:
            with fs.open_listed(e) as listed, fs.open(e.path) as walked:
                assert listed.read() == walked.read()
        with pytest.raises(FileSystemError):
            fs.open_listed(fs.stat("/deep"))
