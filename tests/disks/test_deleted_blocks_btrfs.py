"""Deleted blocks on Btrfs volumes: made by mkfs.btrfs (the layouts it makes by default or on
request), and as Linux's own kernel leaves them in a QEMU guest (:mod:`tests.disks.kernel_guest`)
— frozen as VMware Tools' quiescing does, or with an ``fsync`` still in the log tree.

The free space found is exactly what btrfs-progs' own dump of the chunk, device and extent trees
says (``btrfs inspect-internal``: an independent reader); a backup with ``--exclude-deleted``
records it as zeros — ``btrfs check --check-data-csum`` finds the restored volume clean (every
data extent matches its checksum) and every other byte is the source's; a volume whose metadata
does not vouch for its extent tree is read as usual, with the reason."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import google_crc32c
import pytest

from tests.disks import disk_builders as b
from tests.disks.deleted_helpers import (
    CHUNK,
    backed_up_and_restored,
    fill_with_noise,
    flip_byte,
    on_mbr_disk,
    scan_file,
    zeroed_where_free,
)
from tests.disks.kernel_guest import FRAGMENT, run_guest
from tests.disks.test_deleted_blocks_kernel import assert_deleted_free_and_kept_used
from tests.missing import missing as tool_missing

MiB = b.MiB
SIZE = 320 * MiB
PART = MiB
SUPER_MIRRORS = (64 << 10, 64 * MiB, 256 << 30)
#: mkfs.btrfs options of each layout searched
LAYOUTS: dict[str, list[str]] = {
    "default": [],
    "metadata-single": ["-m", "single"],
    "data-dup": ["-d", "dup"],
    "mixed-block-groups": ["-M"],
    "4k-nodes": ["-n", "4096"],
    "no-free-space-tree": ["-R", "^free-space-tree"],
    "no-skinny-metadata": ["-O", "^skinny-metadata"],
    "xxhash": ["--csum", "xxhash"],
    "sha256": ["--csum", "sha256"],
    "blake2": ["--csum", "blake2"],
}


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("mkfs.btrfs", "btrfs", "btrfstune"):
        if shutil.which(tool) is None:
            tool_missing(f"missing tools: {tool} (see .ci/apt-packages: btrfs-progs)")


def _dump(img: Path, *args: str) -> str:
    return subprocess.run(["btrfs", "inspect-internal", *args, str(img)], capture_output=True,
                          text=True, check=True).stdout


def progs_free(img: Path) -> list[tuple[int, int]]:
    """Free ``(offset, length)`` on the device by btrfs-progs' dump of its trees: each chunk's
    range no extent item covers, on each of its stripes, and the bytes no chunk uses — less the
    first MiB and the superblock mirrors; adjacent runs merged."""
    sb = _dump(img, "dump-super")
    device = int(re.search(r"^dev_item\.total_bytes\s+(\d+)", sb, re.M).group(1))  # type: ignore[union-attr]
    nodesize = int(re.search(r"^nodesize\s+(\d+)", sb, re.M).group(1))  # type: ignore[union-attr]
    chunks: list[tuple[int, int, list[int]]] = []
    for block in _dump(img, "dump-tree", "-t", "chunk").split("CHUNK_ITEM ")[1:]:
        start = int(block.split(")")[0])
        length = int(re.search(r"length (\d+)", block).group(1))  # type: ignore[union-attr]
        stripes = [int(s) for s in re.findall(r"stripe \d+ devid \d+ offset (\d+)", block)]
        chunks.append((start, length, stripes))
    used = sorted(
        (int(at), nodesize if kind == "METADATA_ITEM" else int(n))
        for at, kind, n in re.findall(r"key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)",
                                      _dump(img, "dump-tree", "-t", "extent")))
    free: list[tuple[int, int]] = []
    for start, length, stripes in chunks:
        at = start
        for extent, n in [(e, n) for e, n in used if start <= e < start + length]:
            if extent > at:
                free.extend((s + at - start, extent - at) for s in stripes)
            at = extent + n
        if start + length > at:
            free.extend((s + at - start, start + length - at) for s in stripes)
    taken = sorted((s, length) for _start, length, stripes in chunks for s in stripes)
    at = MiB
    for s, length in [*taken, (device, 0)]:
        if s > at:
            free.append((at, s - at))
        at = max(at, s + length)
    holes = [(0, MiB)] + [(m, 4096) for m in SUPER_MIRRORS]
    pieces = [(o, o + n) for o, n in sorted(free)]
    for h, n in holes:
        pieces = [p for a, e in pieces for p in ((a, min(e, h)), (max(a, h + n), e))
                  if p[0] < p[1]]
    merged: list[tuple[int, int]] = []
    for a, e in pieces:
        if merged and merged[-1][0] + merged[-1][1] == a:
            merged[-1] = (merged[-1][0], e - merged[-1][0])
        else:
            merged.append((a, e - a))
    return merged


def _tree(tmp: Path) -> Path:
    tree = tmp / "tree"
    (tree / "docs").mkdir(parents=True)
    (tree / "keep.bin").write_bytes(random.Random(1).randbytes(3 * MiB))
    (tree / "docs" / "note.txt").write_text("kept\n")
    for i in range(40):
        (tree / "docs" / f"small{i}").write_bytes(random.Random(i).randbytes(3000 + 977 * i))
    return tree


def _mkfs(path: Path, options: list[str], tree: Path | None = None, size: int = SIZE) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    rootdir: list[str | Path] = ["--rootdir", tree] if tree is not None else []
    b.run("mkfs.btrfs", "-q", "-f", *options, *rootdir, path)
    return path


def _check(volume: Path) -> None:
    checked = subprocess.run(["btrfs", "check", "--readonly", "--check-data-csum", str(volume)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_free_space_is_what_btrfs_progs_finds(tmp_path: Path, layout: str) -> None:
    volume = _mkfs(tmp_path / "volume.img", LAYOUTS[layout], _tree(tmp_path))
    disk = on_mbr_disk(tmp_path, volume, PART)
    found = scan_file(disk, CHUNK)
    assert found.notes == []
    want = [(PART + o, n) for o, n in progs_free(volume) if n >= CHUNK]
    assert want and [(a.offset, a.length) for a in found.areas] == want
    assert {a.volume for a in found.areas} == {"p1"}


def test_a_backup_leaves_deleted_data_out_and_restores_a_clean_volume(tmp_path: Path) -> None:
    volume = _mkfs(tmp_path / "source.img", [], _tree(tmp_path))
    noise = fill_with_noise(volume, progs_free(volume), 7)
    _check(volume)  # the noise is in free space only
    disk = on_mbr_disk(tmp_path, volume, PART)
    summary, point, _restored, back = backed_up_and_restored(disk, "btrfs", tmp_path, PART, SIZE)
    record = point.disks[0].extra["deleted"]
    assert record["notes"] == [] and record["volumes"][0]["volume"] == "p1", record
    assert summary["bytes_excluded"] >= noise - 8 * MiB  # whole chunks only
    _check(back)
    source, restored = volume.read_bytes(), back.read_bytes()
    differing = zeroed_where_free(source, restored, progs_free(volume))
    assert differing >= noise - 8 * MiB
    assert restored.find(random.Random(1).randbytes(3 * MiB)[:MiB]) >= 0
    for m in SUPER_MIRRORS[:2]:
        assert restored[m:m + 4096] == source[m:m + 4096]


# -- refusals --------------------------------------------------------------------------------
def _superblock_patched(volume: Path, at: int, value: bytes) -> None:
    """Write ``value`` at ``at`` in the primary superblock and put its crc32c right."""
    with open(volume, "r+b") as f:
        f.seek(64 << 10)
        sb = bytearray(f.read(4096))
        sb[at:at + len(value)] = value
        sb[:4] = google_crc32c.value(bytes(sb[32:])).to_bytes(4, "little")
        f.seek(64 << 10)
        f.write(sb)


def _physical(volume: Path, logical: int) -> list[int]:
    """The device offsets of each copy of the tree block at ``logical``."""
    out = []
    for block in _dump(volume, "dump-tree", "-t", "chunk").split("CHUNK_ITEM ")[1:]:
        start = int(block.split(")")[0])
        length = int(re.search(r"length (\d+)", block).group(1))  # type: ignore[union-attr]
        if start <= logical < start + length:
            out += [int(s) + logical - start
                    for s in re.findall(r"stripe \d+ devid \d+ offset (\d+)", block)]
    return out


def _extent_root(volume: Path) -> int:
    out = _dump(volume, "dump-tree", "-t", "root")
    return int(re.search(r"EXTENT_TREE ROOT_ITEM 0\).*?\n.*?bytenr (\d+)", out).group(1))  # type: ignore[union-attr]


def _both_copies_flipped(tmp: Path, volume: Path) -> None:
    for at in _physical(volume, _extent_root(volume)):
        flip_byte(volume, at + 300)


def _seed(tmp: Path, volume: Path) -> None:
    b.run("btrfstune", "-S", "1", volume)


def _error_flag(tmp: Path, volume: Path) -> None:
    _superblock_patched(volume, 56, (1 | 1 << 2).to_bytes(8, "little"))


def _log_root(tmp: Path, volume: Path) -> None:
    _superblock_patched(volume, 0x60, (30 * MiB).to_bytes(8, "little"))


def _superblock_checksum(tmp: Path, volume: Path) -> None:
    flip_byte(volume, (64 << 10) + 200)


def _two_devices(tmp: Path, volume: Path) -> None:
    other = tmp / "other.img"
    with open(other, "wb") as f:
        f.truncate(SIZE)
    b.run("mkfs.btrfs", "-q", "-f", volume, other)


REFUSALS = {
    "seed-device": (r"superblock flags 0x100000001 \(a seed device, a metadata dump or a "
                    r"conversion in progress: not searched\)", _seed),
    "error-flag": (r"marked as having had errors \(btrfs check first\)", _error_flag),
    "log-tree": (r"its log tree holds fsynced changes not yet committed \(neither frozen nor "
                 r"cleanly unmounted\)", _log_root),
    "superblock-checksum": ("its primary boot sector or superblock is damaged",
                            _superblock_checksum),
    "two-devices": (r"spans 2 devices \(not searched\)", _two_devices),
    "extent-tree-block": (r"FsDamagedError reading its metadata", _both_copies_flipped),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_volume_that_does_not_vouch_for_its_extent_tree_is_read_as_usual(
    tmp_path: Path, case: str
) -> None:
    why, make = REFUSALS[case]
    volume = _mkfs(tmp_path / "volume.img", [])
    make(tmp_path, volume)
    found = scan_file(volume, CHUNK)
    assert found.areas == []
    [note] = found.notes
    assert re.fullmatch(f"whole: {why}: free space read as usual", note), note


def test_one_bad_copy_of_a_dup_tree_block_is_read_from_the_other(tmp_path: Path) -> None:
    volume = _mkfs(tmp_path / "volume.img", [])
    want = progs_free(volume)
    flip_byte(volume, _physical(volume, _extent_root(volume))[0] + 300)
    found = scan_file(volume, CHUNK)
    assert found.notes == []
    assert [(a.offset, a.length) for a in found.areas] == [(o, n) for o, n in want
                                                            if n >= CHUNK]


def test_a_used_count_that_disagrees_with_the_extents_is_read_as_usual(tmp_path: Path) -> None:
    """The block group item says more is used than its extents add up to (the item rewritten,
    its tree block's checksum put right)."""
    volume = _mkfs(tmp_path / "volume.img", ["-m", "single"], _tree(tmp_path))
    out = _dump(volume, "dump-tree", "-t", "extent")
    start = int(re.search(r"key \((\d+) BLOCK_GROUP_ITEM \d+\).*\n.*flags DATA", out)
                .group(1))  # type: ignore[union-attr]
    leaf = _extent_root(volume)
    [at] = _physical(volume, leaf)
    with open(volume, "r+b") as f:
        f.seek(at)
        block = bytearray(f.read(16384))
        nritems = int.from_bytes(block[96:100], "little")
        for i in range(nritems):
            item = 101 + 25 * i
            if (int.from_bytes(block[item:item + 8], "little") == start
                    and block[item + 8] == 192):
                data = 101 + int.from_bytes(block[item + 17:item + 21], "little")
                used = int.from_bytes(block[data:data + 8], "little")
                block[data:data + 8] = (used + 4096).to_bytes(8, "little")
        block[:4] = google_crc32c.value(bytes(block[32:])).to_bytes(4, "little")
        f.seek(at)
        f.write(block)
    found = scan_file(volume, CHUNK)
    assert found.areas == []
    assert re.fullmatch(rf"whole: block group at {start}: \d+ bytes in extents, \d+ in its item: "
                        "free space read as usual", found.notes[0]), found.notes


# -- as Linux leaves it ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_frozen_btrfs_shows_the_deleted_file_free_and_the_kept_one_in_use(
    tmp_path: Path,
) -> None:
    """The freeze commits the transaction: no log tree, the extent tree holds the kept file and
    not the deleted one."""
    disk = run_guest(tmp_path, "btrfs", freeze=True)
    _check(disk)
    found = scan_file(disk)
    assert found.notes == []
    assert [(a.offset, a.length) for a in found.areas] == [
        (o, n) for o, n in progs_free(disk) if n >= MiB]
    assert_deleted_free_and_kept_used(disk, found)


#: a file committed, then a line appended to it and fsynced (what a log or database does)
FSYNC_ONLY = """  cp /keep.bin /mnt/keep.bin
  sync
  echo appended >> /mnt/keep.bin
  sync /mnt/keep.bin"""


@pytest.mark.slow
def test_a_btrfs_with_an_fsync_in_its_log_tree_is_read_as_usual(tmp_path: Path) -> None:
    """The power cut after an ``fsync`` and before the next commit: the fsynced data is in the
    log tree only, which the next mount replays."""
    disk = run_guest(tmp_path, "btrfs", freeze=False, script=FSYNC_ONLY, sync=False)
    assert "log_root\t\t0\n" not in _dump(disk, "dump-super")
    found = scan_file(disk)
    assert found.areas == []
    assert found.notes == ["whole: its log tree holds fsynced changes not yet committed "
                           "(neither frozen nor cleanly unmounted): free space read as usual"]


@pytest.mark.slow
def test_a_fragmented_frozen_btrfs_whose_free_space_tree_uses_bitmaps(tmp_path: Path) -> None:
    """Hundreds of holes in one block group: its free-space tree keeps them as bitmaps."""
    disk = run_guest(tmp_path, "btrfs", freeze=True, script=FRAGMENT.format(files=1200))
    assert "FREE_SPACE_BITMAP" in _dump(disk, "dump-tree", "-t", "10")
    found = scan_file(disk, 4096)
    assert found.notes == []
    assert [(a.offset, a.length) for a in found.areas] == progs_free(disk)


def test_an_extent_tree_larger_than_one_search_reads_is_read_as_usual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmkeep.disks import deleted_blocks

    volume = _mkfs(tmp_path / "volume.img", [], _tree(tmp_path))
    monkeypatch.setattr(deleted_blocks, "READ_BUDGET", 256 << 10)
    found = scan_file(volume, CHUNK)
    assert found.areas == []
    assert found.notes == ["whole: its metadata is more than one search reads (0.25 MiB): free "
                           "space read as usual"]
