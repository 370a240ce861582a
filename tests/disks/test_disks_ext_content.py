"""Where an ext4 file's content is not plainly in its blocks.  ``inline_data``: a small file lives
in its inode — 60 bytes in ``i_block``, the rest in its ``system.data`` extended attribute; every
size that mke2fs stores inline reads back whole (dissect read the first 60 bytes alone, in
silence).  fscrypt: an encrypted file's blocks hold ciphertext; opening it is a typed error, not
the ciphertext as the file, and listings (the generic path and ``ls``'s fast one) say so."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from vmkeep.browse import fastlist
from vmkeep.disks.errors import FsContentElsewhereError
from vmkeep.disks.fs import open_filesystem

SIZES = (0, 1, 59, 60, 61, 100, 140, 300, 5000)


def test_inline_files_of_every_size_read_back_whole(tmp_path: Path) -> None:
    b._need(["mke2fs", "debugfs"])
    tree = tmp_path / "tree"
    tree.mkdir()
    for size in SIZES:
        (tree / f"f{size}").write_bytes(bytes((i * 7 + size) % 251 for i in range(size)))
    img = tmp_path / "ext4.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-I", "256", "-O", "inline_data",
                    "-d", str(tree), str(img), "16M"], check=True, capture_output=True)
    inline = subprocess.run(["debugfs", "-R", "stat /f100", str(img)], capture_output=True,
                            text=True).stdout
    assert "Size of inline data: 100" in inline, inline  # the case that was cut at 60
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        for size in SIZES:
            with fs.open(f"/f{size}") as f:
                assert f.read() == (tree / f"f{size}").read_bytes(), size


def test_a_file_fscrypt_encrypted_is_an_error_not_ciphertext(tmp_path: Path) -> None:
    b._need(["mke2fs", "debugfs"])
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "enc.txt").write_text("ciphertext, as far as a reader without the key knows\n")
    (tree / "plain.txt").write_text("plain\n")
    img = tmp_path / "ext4.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "encrypt", "-d", str(tree),
                    str(img), "16M"], check=True, capture_output=True)
    subprocess.run(["debugfs", "-w", "-R", "set_inode_field /enc.txt flags 0x80800", str(img)],
                   check=True, capture_output=True)  # EXT4_ENCRYPT_FL | EXT4_EXTENTS_FL
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        with fs.open("/plain.txt") as f:
            assert f.read() == b"plain\n"
        with pytest.raises(FsContentElsewhereError, match=r"encrypted \(fscrypt\)"):
            fs.open("/enc.txt")
        fast = fastlist.listdir(fs, "/")
        assert fast is not None
        for listing in (fs.listdir("/"), fast):
            marked = {e.name: e.elsewhere for e in listing if e.type == "file"}
            assert marked["plain.txt"] == ""
            assert "encrypted (fscrypt)" in marked["enc.txt"]


def test_inline_directories_list_their_entries(tmp_path: Path) -> None:
    """mke2fs keeps a directory of a few entries inline (``i_block``: the parent's inode, then
    entries); dissect listed such a directory as empty."""
    b._need(["mke2fs", "debugfs"])
    tree = tmp_path / "tree"
    (tree / "two").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "two" / "a").write_text("1\n")
    (tree / "two" / "bb").write_text("2\n")
    img = tmp_path / "ext4.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "inline_data", "-d", str(tree),
                    str(img), "16M"], check=True, capture_output=True)
    stat = subprocess.run(["debugfs", "-R", "stat /two", str(img)], capture_output=True,
                          text=True).stdout
    assert "Size of inline data: 60" in stat, stat
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert sorted(e.name for e in fs.listdir("/two")) == ["a", "bb"]
        assert fs.listdir("/empty") == []
        with fs.open("/two/bb") as f:
            assert f.read() == b"2\n"


GROW_INLINE = """  mkdir /mnt/d
  for name in alpha bravo charlie delta echo foxtrot; do echo $name > /mnt/d/$name; done
  sync"""


@pytest.mark.slow
def test_an_inline_directory_grown_into_its_system_data_attribute(tmp_path: Path) -> None:
    """Linux keeps a growing inline directory's further entries in its ``system.data``
    attribute before it moves it to a block."""
    from tests.disks.kernel_guest import run_guest

    disk = run_guest(tmp_path, "ext4", freeze=True, script=GROW_INLINE,
                     mkfs_options=("-O", "inline_data", "-I", "256"))
    stat = subprocess.run(["debugfs", "-R", "stat /d", str(disk)], capture_output=True,
                          text=True).stdout
    size = int(stat.split("Size of inline data: ")[1].split()[0])
    assert size > 60, stat  # entries in system.data too
    names = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    with open(disk, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert sorted(e.name for e in fs.listdir("/d")) == names
        for name in names:
            with fs.open(f"/d/{name}") as f:
                assert f.read() == f"{name}\n".encode()
