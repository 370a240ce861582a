"""exFAT volumes with files, written by a real exFAT implementation (exfat-fuse): everything lists
and reads as written; damage in any directory, entry set or FAT chain is a typed error, never a
silent partial listing; contiguous directories, preallocated files and UTC offsets as the
specification has them.  (dissect.fat listed every such volume empty.)"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import time
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from vmkeep.disks.errors import FileSystemError, FsDamagedError
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.fs.exfat import _mtime_ns, _set_checksum

MANY = 300  # files in /many: 4 entries each, 38 KiB of directory (ten 4 KiB clusters)


def _tree(root: Path) -> None:
    rng = random.Random(3)
    (root / "Ordner" / "Unterordner").mkdir(parents=True)
    (root / "many").mkdir()
    (root / "hello.txt").write_bytes(b"hello exfat\n")
    (root / "Größenänderung – résumé.txt").write_bytes(rng.randbytes(5000))
    (root / ("a" * 200 + ".bin")).write_bytes(rng.randbytes(70_000))  # 14 file-name entries
    (root / "empty").write_bytes(b"")
    (root / "Ordner" / "Unterordner" / "deep.dat").write_bytes(rng.randbytes(300_000))
    for i in range(MANY):
        (root / "many" / f"file-with-a-long-name-{i:04d}.txt").write_bytes(b"x%d" % i)


def _fragment(mnt: Path) -> None:
    """Two files appended to in turns: both end up in many runs of clusters (FAT chains)."""
    for i in range(40):
        for name in ("frag1.bin", "frag2.bin"):
            with open(mnt / name, "ab") as f:
                f.write(bytes([i]) * 40_000)


@pytest.fixture(scope="module")
def exfat(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, bytes]]:
    """The raw image and the content of every file in it (by path)."""
    b._need(b.DIRECTORY_TOOLS["exfat"])
    tmp = tmp_path_factory.mktemp("exfat")
    src = tmp / "src"
    _tree(src)
    img = tmp / "exfat.img"
    b.mkfs_exfat(src, img, tmp / "mnt", size_mb=32, then=_fragment)
    files = {"/" + str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    for name in ("frag1.bin", "frag2.bin"):
        files["/" + name] = b"".join(bytes([i]) * 40_000 for i in range(40))
    return img.read_bytes(), files


def _walk(fs) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    out = {}
    for _, _dirs, others in fs.walk("/"):
        for e in others:
            with fs.open(e.path) as f:
                out[e.path] = f.read()
    return out


def test_an_exfat_volume_lists_and_reads_as_written(exfat) -> None:  # type: ignore[no-untyped-def]
    raw, files = exfat
    fs = open_filesystem(io.BytesIO(raw), "v")
    assert fs.fstype == "exfat"
    got = _walk(fs)
    assert {p: hashlib.sha256(d).hexdigest() for p, d in got.items()} == {
        p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    assert len(fs.listdir("/many")) == MANY
    assert {e.name for e in fs.listdir("/Ordner")} == {"Unterordner"}
    stat = fs.stat("/frag1.bin")
    assert stat.type == "file" and stat.size == 1_600_000 and stat.mode == 0o100644
    assert fs.stat("/Ordner").type == "dir" and fs.stat("/Ordner").inode is not None
    assert abs(stat.mtime_ns / 1e9 - time.time()) < 86400  # written by the fixture just now
    with pytest.raises(FileSystemError):
        fs.open("/nope")


def _locate(raw: bytes, path: str) -> tuple[int, int, int]:
    """(byte offset of the entry set naming ``path``'s last component, heap offset in bytes,
    cluster size) found with dissect.fat (an independent reader) and a scan for the name."""
    from dissect.fat import ExFAT

    ex = ExFAT(io.BytesIO(raw))
    heap = ex.cluster_to_sector(2) * ex.sector_size
    name = path.rsplit("/", 1)[1].encode("utf-16-le")[:30]
    at = raw.index(name) - 2 - 2 * 32  # the name entry's text, back to the set's file entry
    assert raw[at] == 0x85, hex(raw[at])
    return at, heap, ex.cluster_size


def _patched(raw: bytes, at: int, data: bytes) -> io.BytesIO:
    buf = bytearray(raw)
    buf[at : at + len(data)] = data
    return io.BytesIO(bytes(buf))


def _resum(buf: io.BytesIO, at: int) -> io.BytesIO:
    """Recompute the checksum of the entry set at ``at`` (after a deliberate change)."""
    data = bytearray(buf.getvalue())
    entry_set = bytes(data[at : at + 32 * (1 + data[at + 1])])
    data[at + 2 : at + 4] = struct.pack("<H", _set_checksum(entry_set))
    return io.BytesIO(bytes(data))


def _fat_chain(raw: bytes, first: int, clusters: int) -> list[int]:
    fat = struct.unpack_from("<I", raw, 0x50)[0] * 512
    chain = [first]
    while len(chain) < clusters:
        chain.append(struct.unpack_from("<I", raw, fat + chain[-1] * 4)[0])
    return chain


def test_every_overwritten_directory_cluster_is_damage(exfat) -> None:  # type: ignore[no-untyped-def]
    """Random bytes over any one of /many's clusters, 100 seeds: always a typed error."""
    raw, _files = exfat
    at, heap, cluster = _locate(raw, "/many")
    first = struct.unpack_from("<I", raw, at + 32 + 20)[0]
    length = struct.unpack_from("<Q", raw, at + 32 + 24)[0]
    chain = _fat_chain(raw, first, length // cluster)
    assert len(chain) >= 8
    for seed in range(100):
        rng = random.Random(seed)
        where = heap + (chain[seed % len(chain)] - 2) * cluster
        fs = open_filesystem(_patched(raw, where, rng.randbytes(cluster)), "v")
        try:
            listed = fs.listdir("/many")
        except FsDamagedError:
            continue
        pytest.fail(f"seed {seed}: listed {len(listed)} of {MANY} without an error")


def test_a_changed_entry_set_fails_its_checksum(exfat) -> None:  # type: ignore[no-untyped-def]
    raw, _ = exfat
    at, _, _ = _locate(raw, "/hello.txt")
    with pytest.raises(FsDamagedError, match="checksum mismatch"):  # the root: at open
        open_filesystem(_patched(raw, at + 2 * 32 + 2, b"J"), "v")  # 'h' -> 'J' in the name


def test_a_fat_chain_that_loops_is_damage(exfat) -> None:  # type: ignore[no-untyped-def]
    raw, files = exfat
    at, _, _ = _locate(raw, "/frag1.bin")
    first_cluster = struct.unpack_from("<I", raw, at + 32 + 20)[0]
    assert not raw[at + 32 + 1] & 0x02  # FAT-chained
    fat = struct.unpack_from("<I", raw, 0x50)[0] * 512
    nxt = struct.unpack_from("<I", raw, fat + first_cluster * 4)[0]
    looped = _patched(raw, fat + nxt * 4, struct.pack("<I", first_cluster))  # second -> first
    fs = open_filesystem(looped, "v")
    with pytest.raises(FsDamagedError, match="loops"):
        fs.open("/frag1.bin").read()
    assert fs.open("/hello.txt").read() == files["/hello.txt"]


def test_a_contiguous_directory_is_read_whole(exfat) -> None:  # type: ignore[no-untyped-def]
    """A directory marked NoFatChain (as Windows writes them) spans all its clusters, not one:
    /many's clusters are moved to free clusters at the heap's end, back to back."""
    raw, _ = exfat
    at, heap, cluster = _locate(raw, "/many")
    first = struct.unpack_from("<I", raw, at + 32 + 20)[0]
    length = struct.unpack_from("<Q", raw, at + 32 + 24)[0]
    chain = _fat_chain(raw, first, length // cluster)
    count = struct.unpack_from("<I", raw, 0x5C)[0]
    start = count + 2 - len(chain) - 8
    target = heap + (start - 2) * cluster
    assert not any(raw[target : target + len(chain) * cluster])  # free (never written)
    data = b"".join(raw[heap + (c - 2) * cluster : heap + (c - 1) * cluster] for c in chain)
    buf = _patched(raw, target, data)
    buf = _patched(buf.getvalue(), at + 32 + 20, struct.pack("<I", start))
    buf = _patched(buf.getvalue(), at + 32 + 1, bytes([raw[at + 32 + 1] | 0x02]))  # NoFatChain
    fs = open_filesystem(_resum(buf, at), "v")
    assert len(fs.listdir("/many")) == MANY
    assert fs.stat("/many").inode == start


def test_bytes_past_the_valid_length_read_as_zeros(exfat) -> None:  # type: ignore[no-untyped-def]
    raw, files = exfat
    at, _, _ = _locate(raw, "/Größenänderung – résumé.txt")
    buf = _resum(_patched(raw, at + 32 + 8, struct.pack("<Q", 1000)), at)  # ValidDataLength
    fs = open_filesystem(buf, "v")
    with fs.open("/Größenänderung – résumé.txt") as f:
        data = f.read()
        f.seek(990)
        tail = f.read(20)
    expected = files["/Größenänderung – résumé.txt"]
    assert len(data) == 5000 and data[:1000] == expected[:1000] and data[1000:] == bytes(4000)
    assert tail == expected[990:1000] + bytes(10)


def test_modification_times_carry_the_utc_offset() -> None:
    stamp = (2026 - 1980) << 25 | 12 << 21 | 5 << 16 | 13 << 11 | 30 << 5 | 10  # 13:30:20
    base = _mtime_ns(stamp, 0, 0)  # no offset recorded: local time reported as UTC
    assert base == 1796477420 * 10**9
    assert _mtime_ns(stamp, 150, 0x80) == base + 1_500_000_000  # UTC, +1.5 s
    assert _mtime_ns(stamp, 0, 0x80 | 4) == base - 3600 * 10**9  # UTC+1 (4 quarter hours)
    assert _mtime_ns(stamp, 0, 0x80 | (0x80 - 20)) == base + 5 * 3600 * 10**9  # UTC-5
    assert _mtime_ns(0, 0, 0) == 0  # month 0: no valid time


def test_files_come_back_from_an_image_backup_of_an_exfat_disk(exfat, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The whole way a user goes: back up the disk, `ls` a folder, restore a file and a folder."""
    from tests.cli.test_image_cli import vmkeep

    raw, files = exfat
    img = tmp_path / "disk.img"
    img.write_bytes(raw)
    repo = tmp_path / "repo"
    env = {"VMKEEP_STATE_DIR": str(tmp_path / "state")}
    assert vmkeep("init", repo=repo, **env).returncode == 0
    done = vmkeep("backup", "image", str(img), "--name", "ex", repo=repo, **env)
    assert done.returncode == 0, done.stderr
    listing = vmkeep("ls", "ex@latest:disk0/Ordner/Unterordner", repo=repo, **env)
    assert listing.returncode == 0 and "deep.dat" in listing.stdout, listing.stderr
    out = tmp_path / "out"
    out.mkdir()
    name = "Größenänderung – résumé.txt"
    restored = vmkeep("restore", "files", f"ex@latest:disk0/{name}", "ex@latest:disk0/many",
                      "--to", str(out), repo=repo, **env)
    assert restored.returncode == 0, restored.stderr
    assert (out / name).read_bytes() == files["/" + name]
    assert len(os.listdir(out / "many")) == MANY
