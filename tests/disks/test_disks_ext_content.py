"""Where an ext4 file's content is not plainly in its blocks.  ``inline_data``: a small file lives
in its inode — 60 bytes in ``i_block``, the rest in its ``system.data`` extended attribute; every
size that mke2fs stores inline reads back whole (dissect read the first 60 bytes alone, in
silence).  fscrypt: an encrypted file's blocks hold ciphertext; opening it is a typed error, not
the ciphertext as the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
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
