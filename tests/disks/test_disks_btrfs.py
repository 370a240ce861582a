"""Btrfs tree blocks are checked as the kernel checks them: a damaged block is read from its
mirror copy (DUP metadata, the default on one device), and with no good copy it is damage —
never bytes parsed as metadata (a flipped bit in a directory leaf used to list as if whole).
Blocks crafted with right checksums are checked in form too (Linux's tree-checker): keys out of
order, and a node naming itself as its child — which sent dissect down forever, until memory ran
out (run apart, its memory capped)."""

from __future__ import annotations

import io
import random
import resource
import struct
import subprocess
import sys
from pathlib import Path

import google_crc32c
import pytest

from tests.disks import disk_builders as b
from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs import open_filesystem

NODE = 16384
FS_TREE, DIR_INDEX = 5, 96


def _image(tmp: Path, *mkfs: str) -> bytes:
    b._need(["mkfs.btrfs"])
    tree = tmp / "tree"
    (tree / "big").mkdir(parents=True)
    (tree / "small").mkdir()
    for i in range(400):  # several leaves of directory items
        (tree / "big" / f"a-longer-file-name-{i:04d}.txt").write_text(f"big {i}\n")
    for i in range(3):
        (tree / "small" / f"f{i}").write_text("s")
    img = tmp / "btrfs.img"
    with open(img, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.btrfs", "-q", *mkfs, "--rootdir", str(tree), str(img)], check=True,
                   capture_output=True)
    return img.read_bytes()


def _leaves(raw: bytes) -> dict[int, list[int]]:
    """Logical address → physical offsets of every copy of the file-system tree's leaves that
    hold directory-index items (found by their headers: owner, level, item keys)."""
    fsid = raw[0x10000 + 32 : 0x10000 + 48]
    out: dict[int, list[int]] = {}
    for off in range(0, len(raw) - NODE, 4096):
        if raw[off + 32 : off + 48] != fsid:
            continue
        owner, nritems, level = struct.unpack_from("<QIB", raw, off + 88)
        if owner == FS_TREE and level == 0 and 0 < nritems < NODE // 25 and _directories(raw, off):
            out.setdefault(struct.unpack_from("<Q", raw, off + 48)[0], []).append(off)
    return out


def _directories(raw: bytes, off: int) -> set[int]:
    """Inode numbers of the directories whose index items the leaf at ``off`` holds."""
    nritems = struct.unpack_from("<I", raw, off + 96)[0]
    keys = [struct.unpack_from("<QB", raw, off + 101 + 25 * i) for i in range(nritems)]
    return {objectid for objectid, kind in keys if kind == DIR_INDEX}


def _inum(raw: bytes, path: str) -> int:
    return int(_open(raw, {}).stat(path).inode) & ((1 << 64) - 1)


def _open(raw: bytes, changes: dict[int, bytes]):  # type: ignore[no-untyped-def]
    buf = bytearray(raw)
    for at, data in changes.items():
        buf[at : at + len(data)] = data
    return open_filesystem(io.BytesIO(bytes(buf)), "v")


@pytest.fixture(scope="module")
def dup(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _image(tmp_path_factory.mktemp("dup"), "-m", "dup")


@pytest.mark.parametrize("csum", ["crc32c", "xxhash", "sha256", "blake2"])
def test_every_checksum_type_reads(tmp_path: Path, csum: str) -> None:
    fs = _open(_image(tmp_path, "--csum", csum), {})
    assert len(fs.listdir("/big")) == 400
    with fs.open("/big/a-longer-file-name-0123.txt") as f:
        assert f.read() == b"big 123\n"


def test_a_damaged_copy_is_read_from_its_mirror(dup: bytes) -> None:
    leaves = _leaves(dup)
    assert leaves and all(len(copies) == 2 for copies in leaves.values())
    rng = random.Random(4)
    for copies in leaves.values():  # each leaf in turn: its first copy overwritten
        fs = _open(dup, {copies[0]: rng.randbytes(NODE)})
        assert len(fs.listdir("/big")) == 400
        with fs.open("/big/a-longer-file-name-0399.txt") as f:
            assert f.read() == b"big 399\n"


@pytest.mark.parametrize("damage", ["overwritten", "one bit"])
def test_a_leaf_damaged_in_every_copy_is_damage(dup: bytes, damage: str) -> None:
    rng = random.Random(5)
    inums = {path: _inum(dup, path) for path in ("/big", "/small")}
    held = 0
    for copies in _leaves(dup).values():
        changes = {}
        for at in copies:
            if damage == "overwritten":
                changes[at] = rng.randbytes(NODE)
            else:
                changes[at + 5000] = bytes([dup[at + 5000] ^ 0x10])
        try:
            fs = _open(dup, changes)
        except FsDamagedError as exc:  # a leaf the root directory needs: the volume
            assert "checksum mismatch" in str(exc)
            continue
        for path, inum in inums.items():
            if inum in _directories(dup, copies[0]):  # this leaf lists (part of) ``path``
                held += 1
                with pytest.raises(FsDamagedError, match="checksum mismatch"):
                    fs.listdir(path)
    assert held >= 1


def test_without_a_mirror_one_bit_is_damage(tmp_path: Path) -> None:
    raw = _image(tmp_path, "-m", "single")
    leaves = _leaves(raw)
    assert all(len(copies) == 1 for copies in leaves.values())
    big = _inum(raw, "/big")
    [at, *_] = [copies[0] for copies in leaves.values() if big in _directories(raw, copies[0])]
    with pytest.raises(FsDamagedError, match="checksum mismatch"):
        fs = _open(raw, {at + 6000: bytes([raw[at + 6000] ^ 1])})
        fs.listdir("/big")


def _resealed(block: bytes | bytearray) -> bytes:
    """``block`` with its crc32c checksum made right again (as a crafted block would have it)."""
    out = bytearray(block)
    out[:4] = int(google_crc32c.value(bytes(out[32:]))).to_bytes(4, "little")
    return bytes(out)


def _fs_tree_root(raw: bytes) -> list[int]:
    """The physical offsets of the copies of the file-system tree's root node (level 1)."""
    fsid = raw[0x10000 + 32 : 0x10000 + 48]
    return [off for off in range(0, len(raw) - NODE, 4096) if raw[off + 32 : off + 48] == fsid
            and struct.unpack_from("<QIB", raw, off + 88)[::2] == (FS_TREE, 1)]


def test_a_leaf_with_keys_out_of_order_is_read_from_its_mirror_or_is_damage(dup: bytes) -> None:
    big = _inum(dup, "/big")
    [copies] = [c for c in _leaves(dup).values() if big in _directories(dup, c[0])][:1]
    swapped = {}
    for at in copies:  # the first two items' keys swapped, the checksum made right
        block = bytearray(dup[at:at + NODE])
        block[101:118], block[126:143] = block[126:143], block[101:118]
        swapped[at] = _resealed(block)
    fs = _open(dup, {copies[0]: swapped[copies[0]]})
    assert len(fs.listdir("/big")) == 400
    with pytest.raises(FsDamagedError, match="keys out of order"):
        _open(dup, swapped).listdir("/big")


def test_a_node_naming_itself_as_its_child_is_damage_in_bounded_memory(dup: bytes,
                                                                        tmp_path: Path) -> None:
    roots = _fs_tree_root(dup)
    assert len(roots) == 2, roots  # DUP: the node's two copies
    crafted = bytearray(dup)
    for at in roots:
        block = bytearray(dup[at:at + NODE])
        address = struct.unpack_from("<Q", block, 48)[0]
        struct.pack_into("<Q", block, 101 + 17, address)  # its first child: itself
        crafted[at:at + NODE] = _resealed(block)
    img = tmp_path / "crafted.img"
    img.write_bytes(bytes(crafted))
    code = ("import sys\nfrom vmkeep.disks.fs import open_filesystem\n"
            "from vmkeep.disks.errors import FsDamagedError\n"
            "try:\n    open_filesystem(open(sys.argv[1], 'rb'), 'v').listdir('/big')\n"
            "except FsDamagedError as exc:\n    print(exc)\n")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    run = subprocess.run([sys.executable, "-c", code, str(img)], capture_output=True, text=True,
                         preexec_fn=cap, check=False, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "not the child its parent names" in run.stdout, run.stdout


#: each codec's file: written after remounting with that codec forced, then the volume frozen
COMPRESSED = """  for codec in zstd lzo zlib; do
    mount -o remount,compress-force=$codec /mnt
    i=0
    while [ $i -lt 3000 ]; do
      echo "$codec line $i of a file Btrfs compresses"; i=$((i + 1))
    done > /mnt/$codec.txt
    head -c 1500 /mnt/$codec.txt > /mnt/$codec-small.txt
    sync
  done"""
#: the compression types of EXTENT_DATA items (btrfs_tree.h)
CODECS = {"zlib": 1, "lzo": 2, "zstd": 3}


def _expected(codec: str) -> bytes:
    return "".join(f"{codec} line {i} of a file Btrfs compresses\n"
                   for i in range(3000)).encode()


@pytest.mark.slow
def test_files_linux_compressed_with_zstd_lzo_and_zlib_read_back_whole(tmp_path: Path) -> None:
    """Fedora mounts Btrfs with ``compress=zstd:1`` by default: a file-level restore of such a
    guest reads compressed extents (zstd through backports.zstd, which dissect.btrfs[full]
    brings; LZO and zlib as dissect decodes them)."""
    from tests.disks.kernel_guest import run_guest

    disk = run_guest(tmp_path, "btrfs", freeze=True, script=COMPRESSED)
    dump = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", str(disk)],
                          capture_output=True, text=True, check=True).stdout
    for codec, number in CODECS.items():
        assert f"compression {number}" in dump, codec  # written compressed by the kernel
    assert "inline extent data size" in dump
    with open(disk, "rb") as fh:
        fs = open_filesystem(fh, "v")
        for codec in CODECS:
            with fs.open(f"/{codec}.txt") as f:
                assert f.read() == _expected(codec), codec
            with fs.open(f"/{codec}-small.txt") as f:  # inline in its leaf, compressed
                assert f.read() == _expected(codec)[:1500], codec


def test_a_label_that_is_not_utf8_leaves_the_volume_readable(tmp_path: Path) -> None:
    """``mkfs.btrfs -L $'lab\\xff'`` is accepted by btrfs-progs; dissect decoded the label
    strictly while opening the volume, so every file of it was unreadable."""
    b._need(["mkfs.btrfs"])
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.txt").write_bytes(b"still here\n")
    img = tmp_path / "label.img"
    with open(img, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run([b"mkfs.btrfs", b"-q", b"-f", b"-L", b"lab\xff", b"--rootdir",
                    bytes(src), bytes(img)], check=True)
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert [e.name for e in fs.listdir("/")] == ["kept.txt"]
        assert fs.open("/kept.txt").read() == b"still here\n"
        assert fs.fs.label == "lab\ufffd"  # shown as text; the bytes on disk are untouched
    with open(img, "rb") as fh:
        assert b"lab\xff\x00" in fh.read(1 << 20)
