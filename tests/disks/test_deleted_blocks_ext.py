"""Deleted blocks on real ext2/3/4 volumes made by mke2fs and changed by debugfs: the blocks a
deleted file left are found free (every layout mke2fs makes by default or on request: checksums
by CRC32C or CRC16 or none, 1 KiB and 4 KiB blocks, 32- and 64-bit descriptors, with and without
a journal), a backup with ``--exclude-deleted`` records them as zeros — e2fsck finds the restored
volume clean and every file reads back, the deleted data is gone — and a volume whose metadata
does not vouch for its bitmaps is read as usual, with the reason."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.disks.deleted_helpers import CHUNK, backed_up_and_restored, scan_file
from tests.missing import missing as tool_missing
from vmkeep.disks.deleted_blocks import DeletedScan

MiB = b.MiB
PART = MiB
VOLUME = 40 * MiB
KEEP = 3 * MiB
GONE = 12 * MiB
#: mke2fs options of each layout searched (4 KiB blocks unless said otherwise)
LAYOUTS = {
    "ext4": ["-t", "ext4", "-b", "4096"],
    "ext4-crc16": ["-t", "ext4", "-b", "4096", "-O", "^metadata_csum,uninit_bg"],
    "ext4-no-checksums": ["-t", "ext4", "-b", "4096", "-O", "^metadata_csum,^uninit_bg"],
    "ext4-1k": ["-t", "ext4", "-b", "1024"],
    "ext4-32bit": ["-t", "ext4", "-b", "4096", "-O", "^64bit"],
    "ext4-no-journal": ["-t", "ext4", "-b", "4096", "-O", "^has_journal"],
    "ext3": ["-t", "ext3", "-b", "4096"],
    "ext2": ["-t", "ext2", "-b", "4096"],
}


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("mke2fs") is None or shutil.which("debugfs") is None:
        tool_missing("missing tools: mke2fs, debugfs (see .ci/apt-packages)")
    root = tmp_path_factory.mktemp("ext-tree")
    (root / "keep.bin").write_bytes(_random(KEEP, 1))
    (root / "docs").mkdir()
    (root / "docs" / "note.txt").write_text("kept\n")
    (root / "gone.bin").write_bytes(_random(GONE, 2))
    return root


def _volume(tree: Path, path: Path, options: list[str]) -> Path:
    """An ext volume holding ``keep.bin`` and ``docs/note.txt`` that once held ``gone.bin``
    (removed by debugfs: its blocks are free and still hold its bytes)."""
    with open(path, "wb") as f:
        f.truncate(VOLUME)
    b.run("mke2fs", "-q", "-F", *options, "-d", tree, path)
    _debugfs(path, "rm /gone.bin")
    return path


def _debugfs(volume: Path, *commands: str) -> str:
    out = subprocess.run(["debugfs", "-w", "-f", "-", volume], input="\n".join(commands) + "\n",
                         capture_output=True, text=True, check=True)
    return out.stdout


def _found_free(scan: DeletedScan, disk: Path, data: bytes) -> bool:
    """Whether the 4 KiB of ``data`` found on ``disk`` lie in a free area (``data`` starts on
    a block: it is a file's first bytes)."""
    where = disk.read_bytes().find(data[:4096])
    assert where >= 0
    return any(a.offset <= where and where + 4096 <= a.offset + a.length for a in scan.areas)


def _block_of(volume: Path, data: bytes) -> int:
    return volume.read_bytes().find(data[:4096])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_blocks_a_deleted_file_left_are_found_free(
    tree: Path, tmp_path: Path, layout: str
) -> None:
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS[layout])
    scan = scan_file(volume)
    assert scan.notes == []
    assert scan.areas and all(a.volume == "whole" and a.length >= MiB for a in scan.areas)
    gone = _random(GONE, 2)
    for at in range(MiB + MiB // 2, GONE - MiB, MiB):  # the deleted bytes are still there …
        where = _block_of(volume, gone[at:])
        assert where >= 0  # … and found free (its ends may share bitmap bytes with used blocks,
        # mke2fs may have put its first blocks into gaps of less than a MiB between metadata)
        assert any(a.offset <= where < a.offset + a.length for a in scan.areas), at
    assert scan.total >= GONE - 2 * MiB
    keep_at = _block_of(volume, _random(KEEP, 1))
    assert not any(a.offset < keep_at + KEEP and keep_at < a.offset + a.length
                   for a in scan.areas)
    assert scan.total <= VOLUME - KEEP


def test_a_backup_without_deleted_blocks_restores_a_clean_volume_and_no_deleted_data(
    tree: Path, tmp_path: Path
) -> None:
    if shutil.which("e2fsck") is None:
        tool_missing("missing tools: e2fsck (see .ci/apt-packages)")
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS["ext4"])
    disk = b.new_disk(tmp_path / "disk.img", PART + VOLUME)
    b.write_mbr(disk, [(0x83, PART // 512, VOLUME // 512)])
    b.place(disk, PART, volume)
    summary, point, restored, back = backed_up_and_restored(disk, "linux", tmp_path, PART, VOLUME)
    assert summary["bytes_excluded"] >= GONE - 2 * CHUNK  # whole chunks only
    assert point.disks[0].extra["deleted"]["volumes"][0]["volume"] == "p1"
    checked = subprocess.run(["e2fsck", "-fn", str(back)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for path, want in (("/keep.bin", _random(KEEP, 1)), ("/docs/note.txt", b"kept\n")):
        got = subprocess.run(["debugfs", "-R", f"cat {path}", str(back)], capture_output=True,
                             check=True)
        assert got.stdout == want, path
    image = restored.read_bytes()
    for at in range(MiB, GONE - MiB, MiB):  # the deleted data is gone, but for its ends' chunks
        assert image.find(_random(GONE, 2)[at:at + 4096]) < 0, at


def _only_note(scan: DeletedScan) -> str:
    assert scan.areas == []
    [note] = scan.notes
    assert note.startswith("whole: ") and note.endswith(": free space read as usual"), note
    return note.removeprefix("whole: ").removesuffix(": free space read as usual")


@pytest.mark.parametrize(("commands", "reason"), [
    (["feature needs_recovery"], "its journal needs recovery (neither frozen nor cleanly "
     "unmounted)"),
    (["ssv state 3"], "it recorded errors (e2fsck pending)"),
])
def test_a_volume_not_at_rest_is_read_as_usual(
    tree: Path, tmp_path: Path, commands: list[str], reason: str
) -> None:
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS["ext4"])
    _debugfs(volume, *commands)
    assert _only_note(scan_file(volume)) == reason


def test_a_volume_without_journal_in_use_is_read_as_usual(tree: Path, tmp_path: Path) -> None:
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS["ext2"])
    _debugfs(volume, "ssv state 0")  # mounted (or crashed), no journal to say what is safe
    assert _only_note(scan_file(volume)) == "no journal and not cleanly unmounted"


def _group0(volume: Path) -> dict[str, int]:
    from dissect.extfs import ExtFS

    with open(volume, "rb") as fh:
        fs = ExtFS(fh)
        desc = fs._read_group_desc(0)
        return {"block": fs.block_size, "bitmap": int(desc.bg_block_bitmap_lo),
                "table": int(desc.bg_inode_table_lo), "descriptors": fs.groups_offset,
                "free": int(desc.bg_free_blocks_count_lo)}


def _free_in_group0(volume: Path, block: int) -> None:
    """Mark ``block`` (of group 0) free as ext2fs would: bitmap, group count and checksums."""
    free = _group0(volume)["free"]
    _debugfs(volume, f"freeb {block} 1")
    _debugfs(volume, f"set_bg 0 free_blocks_count {free + 1}", "set_bg 0 checksum calc")


def _poke(path: Path, offset: int, change: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ change]))


@pytest.mark.parametrize(("layout", "reason"), [
    ("ext4", "group 0: its block bitmap checksum does not match"),
    ("ext4-crc16", "group 0: {free} blocks free in its bitmap, {was} in its descriptor"),
])
def test_a_bitmap_that_disagrees_with_its_group_is_not_trusted(
    tree: Path, tmp_path: Path, layout: str, reason: str
) -> None:
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS[layout])
    g = _group0(volume)
    before = scan_file(volume)
    assert before.notes == []
    _poke(volume, g["bitmap"] * g["block"], 0x01)  # block 0 (the superblock's) called free
    note = _only_note(scan_file(volume))
    if "{free}" in reason:
        free, was = int(note.split()[2]), int(note.split()[8])
        assert free == was + 1
        reason = reason.format(free=free, was=was)
    assert note == reason


@pytest.mark.parametrize("layout", ["ext4", "ext4-crc16"])
def test_a_damaged_group_descriptor_is_not_trusted(
    tree: Path, tmp_path: Path, layout: str
) -> None:
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS[layout])
    g = _group0(volume)
    _poke(volume, g["descriptors"] + 14, 0x01)  # bg_free_inodes_count_lo
    assert _only_note(scan_file(volume)) == "group 0: its descriptor checksum does not match"


def test_a_volume_whose_bitmap_calls_its_metadata_free_is_not_trusted(
    tree: Path, tmp_path: Path
) -> None:
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS["ext4"])
    g = _group0(volume)
    _free_in_group0(volume, g["table"])
    assert _only_note(scan_file(volume)) == (
        "group 0: its bitmaps or inode table lie in blocks its bitmap calls free")
    volume = _volume(tree, tmp_path / "j.img", LAYOUTS["ext4"])
    journal = int(_debugfs(volume, "bmap <8> 0").split()[-1])
    _free_in_group0(volume, journal)
    assert _only_note(scan_file(volume)) == "its journal lies in blocks its bitmap calls free"


def test_a_volume_read_through_its_backup_superblock_is_not_searched(
    tree: Path, tmp_path: Path
) -> None:
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS["ext4-1k"])  # 5 groups: backups in 1, 3
    _poke(volume, 1024 + 0x100, 0x10)  # the primary fails its checksum
    assert _only_note(scan_file(volume)) == "its primary boot sector or superblock is damaged"
    volume = _volume(tree, tmp_path / "one.img", LAYOUTS["ext4"])  # one group: no backup
    _poke(volume, 1024 + 0x100, 0x10)  # read as it is (with a warning): not searched either
    assert _only_note(scan_file(volume)) == "its superblock checksum does not match"


def test_garbage_after_a_valid_superblock_is_not_trusted(tree: Path, tmp_path: Path) -> None:
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS["ext4-no-checksums"])
    g = _group0(volume)
    with open(volume, "r+b") as f:
        f.seek(g["bitmap"] * g["block"])
        f.write(bytes(g["block"]))  # a bitmap of zeros: everything "free"
    note = _only_note(scan_file(volume))
    assert note.startswith("group 0: ") and "blocks free in its bitmap" in note


def test_a_volume_with_more_bitmap_than_one_search_holds_is_read_as_usual(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmkeep.disks import ext_bitmap

    volume = _volume(tree, tmp_path / "v.img", LAYOUTS["ext4-1k"])  # 5 groups of 1 KiB bitmap
    monkeypatch.setattr(ext_bitmap, "BITMAP_LIMIT", 4 * 1024)
    assert _only_note(scan_file(volume)) == ("its block bitmaps (5120 bytes) are more than one "
                                         "search holds (4096)")


def test_an_ext4_volume_in_a_logical_volume_of_two_segments_maps_onto_the_disk(
    tree: Path, tmp_path: Path
) -> None:
    volume = _volume(tree, tmp_path / "v.img", LAYOUTS["ext4"])
    half = VOLUME // MiB // 2  # the LV's first half lies after its second on the PV (lvextend)
    disk = b.new_disk(tmp_path / "disk.img", PART + VOLUME + 4 * MiB)
    b.write_gpt(disk, [(b.LINUX_LVM, PART // 512, (PART + VOLUME + 2 * MiB) // 512 - 1, "pv")])
    pe0 = b.write_lvm_pv(disk, PART, VOLUME + 2 * MiB, {"root": [(half, half), (0, half)]})
    with open(volume, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(pe0 + half * MiB)
        dst.write(src.read(half * MiB))  # LV bytes [0, half) at PE half …
        dst.seek(pe0)
        dst.write(src.read(half * MiB))  # … and [half, 2 half) at PE 0
    scan = scan_file(disk)
    assert scan.notes == [] and {a.volume for a in scan.areas} == {"vg0/root"}
    data, gone = disk.read_bytes(), _random(GONE, 2)
    for at in range(MiB + MiB // 2, GONE - MiB, MiB):
        where = data.find(gone[at:at + 4096])
        assert where >= 0 and any(a.offset <= where < a.offset + a.length for a in scan.areas), at
    keep_at = data.find(_random(KEEP, 1)[MiB:MiB + 4096])
    assert keep_at >= 0 and not any(a.offset <= keep_at < a.offset + a.length for a in scan.areas)
