"""XFS version 5 metadata is checked by its CRCs before it is believed: one flipped bit in a
directory block or in a file's inode is damage (of that directory; of that file alone), never a
wrong name or a file of other bytes restored in silence.  An inode's extents must not overlap:
a directory whose extent list repeats a range (a crafted extent tree repeating a subtree yields
its records again and again) is damage too."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import google_crc32c
import pytest

from tests.disks import disk_builders as b
from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs import open_filesystem

DATA = bytes(range(256)) * 1000


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[int], Path]:
    """The image, the blocks of /big's data segment, and the image's path (for xfs_db)."""
    b._need(b.DIRECTORY_TOOLS["xfs"])
    tmp = tmp_path_factory.mktemp("xfs")
    tree = tmp / "tree"
    (tree / "big").mkdir(parents=True)
    for i in range(400):
        (tree / "big" / f"a-longer-file-name-{i:04d}.txt").write_text(f"big {i}\n")
    (tree / "data.bin").write_bytes(DATA)
    (tree / "other.txt").write_text("other\n")
    img = tmp / "xfs.img"
    blocks = b._xfs_with_directory(tree, img, "/big")
    return img.read_bytes(), blocks, img


def _open(raw: bytes, at: int, flip: int = 0x20):  # type: ignore[no-untyped-def]
    buf = bytearray(raw)
    buf[at] ^= flip
    return open_filesystem(io.BytesIO(bytes(buf)), "v")


def test_a_version_5_volume_checks_clean(xfs) -> None:  # type: ignore[no-untyped-def]
    raw, blocks, _ = xfs
    fs = open_filesystem(io.BytesIO(raw), "v")
    assert fs.fs.sb.sb_versionnum & 0xF == 5  # mkfs.xfs's default: CRCs on
    assert len(fs.listdir("/big")) == 400 and len(blocks) > 1
    with fs.open("/data.bin") as f:
        assert f.read() == DATA


def test_one_flipped_bit_in_a_directory_block_is_damage(xfs) -> None:  # type: ignore[no-untyped-def]
    raw, blocks, _ = xfs
    block = raw[blocks[-1] * 4096 : (blocks[-1] + 1) * 4096]
    name = block.index(b"a-longer-file-name-")  # a name inside the directory's last block
    fs = _open(raw, blocks[-1] * 4096 + name + 2)  # "a-longer" -> "a-Longer": still a name
    with pytest.raises(FsDamagedError, match=r"block \d+: CRC mismatch"):
        fs.listdir("/big")
    with fs.open("/data.bin") as f:
        assert f.read() == DATA


def test_one_flipped_bit_in_a_file_inode_fails_that_file_alone(  # type: ignore[no-untyped-def]
    xfs, tmp_path: Path
) -> None:
    raw, _, img = xfs
    inum = int(open_filesystem(io.BytesIO(raw), "v").stat("/data.bin").inode)
    out = subprocess.run(["xfs_db", "-r", "-c", f"convert inode {inum} fsbyte", str(img)],
                         check=True, capture_output=True, text=True).stdout
    at = int(out.split()[0], 16 if out.startswith("0x") else 10) + 56 + 5  # inside di_size
    fs = _open(raw, at, 0x01)  # the size grows by 64 KiB: bytes that are not the file's
    b.assert_file_alone_is_lost(fs, tmp_path / "out", "/data.bin", f"inode {inum}: CRC mismatch")
    assert (tmp_path / "out" / "other.txt").read_text() == "other\n"
    assert len(list((tmp_path / "out" / "big").iterdir())) == 400


def test_an_unwritten_extent_reads_as_zeros_not_the_old_bytes_under_it(  # type: ignore[no-untyped-def]
    xfs, tmp_path: Path
) -> None:
    """``fallocate`` leaves unwritten extents over whatever the blocks held (here: the file's
    own bytes, turned unwritten by xfs_db, which xfs_repair accepts); the kernel reads zeros."""
    _raw, _, img = xfs
    copy = tmp_path / "xfs.img"
    copy.write_bytes(img.read_bytes())
    subprocess.run(["xfs_db", "-x", "-c", "path /data.bin", "-c", "write u3.bmx[0].extentflag 1",
                    str(copy)], check=True, capture_output=True)
    assert subprocess.run(["xfs_repair", "-n", str(copy)], capture_output=True).returncode == 0
    with open(copy, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert fs.stat("/data.bin").size == len(DATA)
        with fs.open("/data.bin") as f:
            assert f.read() == bytes(len(DATA))
        with fs.open("/other.txt") as f:
            assert f.read() == b"other\n"


def test_a_directory_whose_extents_overlap_is_damage(xfs) -> None:  # type: ignore[no-untyped-def]
    raw, _, img = xfs
    fs = open_filesystem(io.BytesIO(raw), "v")
    inum = int(fs.stat("/big").inode)
    out = subprocess.run(["xfs_db", "-r", "-c", f"convert inode {inum} fsbyte", str(img)],
                         check=True, capture_output=True, text=True).stdout
    at = int(out.split()[0], 16 if out.startswith("0x") else 10)
    size = int(fs.fs.sb.sb_inodesize)  # type: ignore[attr-defined]
    inode = bytearray(raw[at:at + size])
    assert inode[5] == 2 and int.from_bytes(inode[76:80], "big") >= 2  # extents format
    first, second = (int.from_bytes(inode[176 + 16 * i:192 + 16 * i], "big") for i in (0, 1))
    offset_bits = ((1 << 54) - 1) << 73  # a record's file offset (blocks)
    crafted = (second & ~offset_bits) | (first & offset_bits)  # the second where the first is
    inode[192:208] = crafted.to_bytes(16, "big")
    inode[100:104] = bytes(4)
    inode[100:104] = int(google_crc32c.value(bytes(inode))).to_bytes(4, "little")
    buf = bytearray(raw)
    buf[at:at + size] = inode
    fs = open_filesystem(io.BytesIO(bytes(buf)), "v")
    with pytest.raises(FsDamagedError, match=rf"inode {inum}: its extents overlap"):
        fs.listdir("/big")
    with fs.open("/data.bin") as f:
        assert f.read() == DATA
