"""ext4 ``inline_data``: a small file lives in its inode — 60 bytes in ``i_block``, the rest in
its ``system.data`` extended attribute.  Every size that mke2fs stores inline reads back whole
(dissect read the first 60 bytes alone, in silence)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.disks import disk_builders as b
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
