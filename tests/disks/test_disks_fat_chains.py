"""A damaged FAT — a cluster chain that loops, ends before its file does, or runs into a free,
bad or out-of-range cluster — is a typed error naming the damage, never a process eating memory
(dissect follows a loop forever, building its run list), a file padded with zeros, or an
untyped exception.  Volumes made by mkfs.vfat and mcopy, both FAT copies patched as a damaged
volume would have them."""

from __future__ import annotations

import os
import re
import resource
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from vmkeep.disks.errors import FsDamagedError
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.safe_restore import restore

BIG = os.urandom(300_000)  # 586 clusters of 512 bytes


class Fat:
    """A FAT32 volume's geometry, to patch its FAT entries (in every copy)."""

    def __init__(self, img: Path) -> None:
        self.img = img
        head = img.read_bytes()[:512]
        self.sector, self.per_cluster, self.reserved, self.copies = struct.unpack_from(
            "<HBHB", head, 11)
        (self.fat_sectors,) = struct.unpack_from("<I", head, 36)

    def get(self, cluster: int) -> int:
        with open(self.img, "rb") as f:
            f.seek(self.reserved * self.sector + 4 * cluster)
            return int.from_bytes(f.read(4), "little") & 0x0FFFFFFF

    def set(self, cluster: int, value: int) -> None:
        with open(self.img, "r+b") as f:
            for copy in range(self.copies):
                f.seek((self.reserved + copy * self.fat_sectors) * self.sector + 4 * cluster)
                f.write(value.to_bytes(4, "little"))

    def chain(self, first: int) -> list[int]:
        out = [first]
        while (nxt := self.get(out[-1])) < 0x0FFFFFF8:
            out.append(nxt)
        return out


@pytest.fixture
def volume(tmp_path: Path) -> tuple[Path, list[int]]:
    b._need(["mkfs.vfat", "mcopy"])
    src = tmp_path / "src"
    src.mkdir()
    (src / "BIG.BIN").write_bytes(BIG)
    (src / "NOTE.TXT").write_bytes(b"kept\n")
    img = tmp_path / "fat.img"
    b.new_disk(img, 40 * b.MiB)
    b.run("mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", img)
    b.run("mcopy", "-i", img, src / "BIG.BIN", src / "NOTE.TXT", "::/")
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        first = fs.fs.get("BIG.BIN").cluster  # type: ignore[attr-defined]
        with fs.open("/BIG.BIN") as f:
            assert f.read() == BIG
    return img, Fat(img).chain(first)


#: damage read in this process (a loop is read apart, in bounded memory: below)
DAMAGE: dict[str, tuple[Callable[[list[int]], tuple[int, int]], str]] = {
    "ends early": (lambda c: (c[5], 0x0FFFFFFF), r"/BIG\.BIN: its cluster chain ends after 6 "
                                                 r"clusters, short of its 300000 bytes"),
    "free": (lambda c: (c[5], 0), "which the FAT calls free"),
    "bad": (lambda c: (c[5], 0x0FFFFFF7), "marked bad"),
    "out of range": (lambda c: (c[5], 0x0FFFFF0), "exceeds FAT entry count"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_chain_is_a_typed_error_and_the_rest_restores(
        volume: tuple[Path, list[int]], kind: str, tmp_path: Path) -> None:
    img, chain = volume
    patch, why = DAMAGE[kind]
    Fat(img).set(*patch(chain))
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        with pytest.raises(FsDamagedError, match=why):
            fs.open("/BIG.BIN").read()
        (tmp_path / "out").mkdir()
        summary = restore(fs, tmp_path / "out", "/")
    assert (tmp_path / "out" / "NOTE.TXT").read_bytes() == b"kept\n"
    assert [(w.path, w.reason) for w in summary.skipped] == [("/BIG.BIN", "read-error")]


@pytest.mark.parametrize(("where", "loop"), [
    ("/BIG.BIN", lambda c: (c[5], c[2])),  # the file's chain back to its third cluster
    ("/", lambda c: (2, 2)),  # the root directory's cluster pointing at itself
])
def test_a_chain_that_loops_ends_with_an_error_in_bounded_memory(
        volume: tuple[Path, list[int]], where: str,
        loop: Callable[[list[int]], tuple[int, int]]) -> None:
    """Read apart, its address space capped: a regression fails this test, not the run."""
    img, chain = volume
    Fat(img).set(*loop(chain))
    code = ("import sys\nfrom vmkeep.disks.fs import open_filesystem\n"
            "from vmkeep.disks.errors import FsDamagedError\n"
            "try:\n"
            "    fs = open_filesystem(open(sys.argv[1], 'rb'), 'v')\n"
            "    fs.listdir('/') if sys.argv[2] == '/' else fs.open(sys.argv[2]).read()\n"
            "except FsDamagedError as exc:\n    print(exc)\n")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    run = subprocess.run([sys.executable, "-c", code, str(img), where], capture_output=True,
                         text=True, preexec_fn=cap, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"the cluster chain from cluster \d+ returns to cluster \d+: a loop",
                     run.stdout), run.stdout
