"""Deleted blocks (Veeam's BitLooker) on real NTFS volumes made by mkntfs and written through
ntfs-3g: the free clusters of a volume are found, a backup with ``--exclude-deleted`` records
them as zeros — every file still reads back by ntfs-3g's own tools, the deleted data is gone —
and a volume whose metadata does not vouch for its bitmap is read as usual."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.disks.deleted_helpers import CHUNK, backed_up_and_restored
from tests.missing import missing as tool_missing
from tests.restore.restore_helpers import run_cli
from vmkeep.disks.deleted_blocks import find_deleted
from vmkeep.storage.repository import Repository

MiB = b.MiB
PART = MiB  # the NTFS partition's offset on the disk
VOLUME = 40 * MiB
KEEP = 3 * MiB
GONE = 12 * MiB


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(scope="module")
def ntfs_disk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An MBR disk whose NTFS partition holds ``keep.bin`` and once held ``gone.bin`` (written,
    synced, deleted: its clusters are free and still hold its bytes)."""
    missing = [t for t in ("mkntfs", "ntfs-3g", "ntfscat", "ntfsfix", "fusermount3")
               if shutil.which(t) is None]
    if missing or not os.path.exists("/dev/fuse"):
        tool_missing(f"missing tools: {missing or '/dev/fuse'} (see .ci/apt-packages)")
    root = tmp_path_factory.mktemp("deleted")
    volume, mnt = root / "ntfs.img", root / "mnt"
    with open(volume, "wb") as f:
        f.truncate(VOLUME)
    b.run("mkntfs", "-q", "-F", "-Q", "-c", "4096", "-p", str(PART // 512), volume)
    mnt.mkdir()
    b.run("ntfs-3g", volume, mnt)
    try:
        (mnt / "keep.bin").write_bytes(_random(KEEP, 1))
        (mnt / "docs").mkdir()
        (mnt / "docs" / "note.txt").write_text("kept\n")
        (mnt / "gone.bin").write_bytes(_random(GONE, 2))
        os.sync()
        (mnt / "gone.bin").unlink()
    finally:
        b.run("fusermount3", "-u", mnt)
    disk = b.new_disk(root / "disk.img", PART + VOLUME)
    b.write_mbr(disk, [(0x07, PART // 512, VOLUME // 512)])
    b.place(disk, PART, volume)
    return {"root": root, "disk": disk, "volume": volume}


def _pread(path: Path):  # type: ignore[no-untyped-def]
    fh = open(path, "rb")  # noqa: SIM115 - closed with the test's process

    def pread(offset: int, length: int) -> bytes:
        return os.pread(fh.fileno(), length, offset)

    return pread


def _copy_with(disk: Path, to: Path, offset: int, data: bytes) -> Path:
    shutil.copyfile(disk, to)
    with open(to, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return to


def _ntfs(disk: Path):  # type: ignore[no-untyped-def]
    from dissect.ntfs import NTFS
    from dissect.util.stream import RangeStream

    fh = open(disk, "rb")  # noqa: SIM115
    return NTFS(RangeStream(fh, PART, VOLUME))


def test_the_free_clusters_are_found_inside_the_partition(ntfs_disk: dict[str, Path]) -> None:
    disk = ntfs_disk["disk"]
    scan = find_deleted(_pread(disk), disk.stat().st_size, MiB)
    assert scan.notes == []
    assert scan.total >= GONE, scan.total  # gone.bin's clusters and more
    assert scan.total <= VOLUME - KEEP
    for area in scan.areas:
        assert area.offset >= PART and area.offset + area.length <= PART + VOLUME
        assert area.length >= MiB and area.volume == "p1"
    data = disk.read_bytes()
    gone = _random(GONE, 2)
    where = data.find(gone[:4096])
    assert where >= 0  # the deleted file's bytes are still on the disk …
    assert any(a.offset <= where < a.offset + a.length for a in scan.areas)  # … and found free
    keep_at = data.find(_random(KEEP, 1)[:4096])
    assert not any(a.offset <= keep_at < a.offset + a.length for a in scan.areas)
    assert scan.record()["volumes"] == [{"volume": "p1", "bytes": scan.total}]


def test_a_backup_without_deleted_blocks_restores_every_file_and_no_deleted_data(
    ntfs_disk: dict[str, Path], tmp_path: Path
) -> None:
    summary, point, restored, volume = backed_up_and_restored(ntfs_disk["disk"], "win", tmp_path,
                                                              PART, VOLUME)
    assert summary["bytes_excluded"] >= GONE - 2 * CHUNK, summary  # whole chunks only
    assert point.disks[0].extra["deleted"]["bytes"] >= GONE
    for path, want in (("keep.bin", _random(KEEP, 1)), ("docs/note.txt", b"kept\n")):
        got = subprocess.run(["ntfscat", str(volume), path], capture_output=True, check=True)
        assert got.stdout == want, path
    checked = subprocess.run(["ntfsfix", "-n", str(volume)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert restored.read_bytes().find(_random(GONE, 2)[:4096]) < 0  # the deleted data is gone


def test_a_dirty_volume_is_read_as_usual(ntfs_disk: dict[str, Path], tmp_path: Path) -> None:
    fs = _ntfs(ntfs_disk["disk"])
    record = 3 * fs._record_size + fs.boot_sector.MftStartLcn * fs.cluster_size
    raw = ntfs_disk["disk"].read_bytes()[PART + record: PART + record + fs._record_size]
    at = raw[0x14] | raw[0x15] << 8  # first attribute
    while int.from_bytes(raw[at: at + 4], "little") != 0x70:  # $VOLUME_INFORMATION
        at += int.from_bytes(raw[at + 4: at + 8], "little")
    value = at + int.from_bytes(raw[at + 0x14: at + 0x16], "little")
    dirty = _copy_with(ntfs_disk["disk"], tmp_path / "dirty.img", PART + record + value + 10,
                       bytes([raw[value + 10] | 1]))
    scan = find_deleted(_pread(dirty), dirty.stat().st_size, MiB)
    assert scan.areas == [] and scan.notes == [
        "p1: marked dirty (chkdsk pending): free space read as usual"]


def test_a_bitmap_that_calls_system_files_free_is_not_trusted(
    ntfs_disk: dict[str, Path], tmp_path: Path
) -> None:
    fs = _ntfs(ntfs_disk["disk"])
    [(lcn, _count)] = fs.mft.get(6).dataruns()[:1]
    broken = _copy_with(ntfs_disk["disk"], tmp_path / "bitmap.img",
                        PART + lcn * fs.cluster_size, bytes(64))
    scan = find_deleted(_pread(broken), broken.stat().st_size, MiB)
    assert scan.areas == []
    [note] = scan.notes
    assert note.startswith("p1: $") and "lies in clusters $Bitmap calls free" in note


def test_a_hibernated_volume_is_read_as_usual(tmp_path: Path) -> None:
    if shutil.which("mkntfs") is None or shutil.which("ntfscp") is None:
        tool_missing("missing tools: mkntfs, ntfscp (see .ci/apt-packages)")
    volume = b.new_disk(tmp_path / "hib.img", 16 * MiB)
    b.run("mkntfs", "-q", "-F", "-Q", volume)
    image = tmp_path / "hiberfil.sys"
    image.write_bytes(b"HIBR" + bytes(64 * 1024))
    b.run("ntfscp", "-f", volume, image, "/hiberfil.sys")
    scan = find_deleted(_pread(volume), volume.stat().st_size, MiB)
    assert scan.areas == []
    assert scan.notes == ["whole: hibernated (Windows Fast Startup or hibernation): free space "
                          "read as usual"]


def test_other_file_systems_and_garbage_are_left_alone(tmp_path: Path) -> None:
    noise = tmp_path / "noise.img"
    noise.write_bytes(_random(4 * MiB, 3))
    assert find_deleted(_pread(noise), 4 * MiB, MiB).areas == []
    empty = b.new_disk(tmp_path / "empty.img", 4 * MiB)
    assert find_deleted(_pread(empty), 4 * MiB, MiB).areas == []


def test_all_set_checks_every_bit_of_a_run() -> None:
    from vmkeep.disks.bitmaps import all_set

    bitmap = bytes([0xFF, 0b00001111, 0xFF, 0xFF])  # clusters 12–15 free
    assert all_set(bitmap, 0, 12, 32) and all_set(bitmap, 3, 2, 32)
    assert all_set(bitmap, 16, 16, 32) and all_set(bitmap, 9, 3, 32)
    assert not all_set(bitmap, 0, 13, 32) and not all_set(bitmap, 12, 4, 32)
    assert not all_set(bitmap, 14, 1, 32) and not all_set(bitmap, 11, 10, 32)
    assert not all_set(bitmap, 30, 4, 32) and not all_set(bitmap, -1, 2, 32)


def test_a_vmdk_image_is_searched_through_its_own_reader(
    ntfs_disk: dict[str, Path], tmp_path: Path
) -> None:
    if shutil.which("qemu-img") is None:
        tool_missing("missing tools: qemu-img (see .ci/apt-packages)")
    vmdk = tmp_path / "disk.vmdk"
    b.run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", ntfs_disk["disk"], vmdk)
    repo = tmp_path / "repo"
    Repository.init(str(repo), image_chunk_size=256 * 1024)
    code, out, err = run_cli("backup", "image", str(vmdk), "--name", "win-vmdk",
                             "--exclude-deleted", "--json", repo=repo)
    assert code == 0, err
    # gone.bin's clusters, but for the two chunks its ends may share with data
    assert json.loads(out)["bytes_excluded"] >= GONE - 2 * 256 * 1024
