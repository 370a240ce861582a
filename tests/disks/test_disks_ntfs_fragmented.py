"""An NTFS file fragmented into so many runs that its data attribute no longer fits its MFT
record: NTFS splits it over several records, found through its ``$ATTRIBUTE_LIST`` — as a
database or VHDX file on a long-used Windows file server has it.  Every byte reads back, in
order, also from the middle.  Made by ntfs-3g: a volume filled with small files, every other one
deleted, then one file written into the holes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.disks import disk_builders as b
from vmkeep.disks.fs import open_filesystem

MiB = b.MiB


def test_a_file_in_thousands_of_runs_over_several_records_reads_back(tmp_path: Path) -> None:
    b._need(["mkntfs", "ntfs-3g", "fusermount3", "ntfsinfo"])
    img, mnt = tmp_path / "ntfs.img", tmp_path / "mnt"
    b.new_disk(img, 48 * MiB)
    b.run("mkntfs", "-q", "-F", "-Q", img)
    mnt.mkdir()
    b.run("ntfs-3g", img, mnt)
    try:
        (mnt / "fill").mkdir()
        count = 0
        while True:
            try:
                (mnt / "fill" / str(count)).write_bytes(os.urandom(8192))
            except OSError:  # the volume is full
                break
            count += 1
        for i in range(0, count, 2):
            (mnt / "fill" / str(i)).unlink()
        os.sync()
        data = os.urandom(8192 * (count // 2 - 200))
        (mnt / "frag.bin").write_bytes(data)
    finally:
        b.run("fusermount3", "-u", mnt)
    layout = subprocess.run(["ntfsinfo", "-F", "/frag.bin", str(img)], capture_output=True,
                            text=True).stdout
    assert "$ATTRIBUTE_LIST" in layout, layout[:2000]  # the case this test is about
    assert layout.count("Dumping attribute $DATA") > 1
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert fs.stat("/frag.bin").size == len(data)
        with fs.open("/frag.bin") as f:
            assert f.read() == data
        with fs.open("/frag.bin") as f:
            f.seek(len(data) // 2 + 1234)
            assert f.read(MiB) == data[len(data) // 2 + 1234:][:MiB]
